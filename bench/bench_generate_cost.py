"""Stage 1 request budget: LLM calls and prompt tokens per 1,000 book tokens, default settings.

Runs the real pipeline's dry run (``longctx.generate.stage.run(params, dry_run=True)``: every request
answered at once by :class:`longctx.llm.dry_run.DryRunServer`, which counts prompt tokens with the
Llama-3.1 tokenizer) with the paper's method settings (4,096-token chunks, 12,288-token
sections, 25 hierarchical + 50 diverse questions) over Jane Austen's six novels. The figures are
what a Llama/Qwen-class endpoint would bill, independent of generator speed. It also reports the
pipeline's own overhead per request (wall time with a zero-latency server).

Prefix caching: the share of prompt tokens that repeat an earlier prompt's prefix, measured on
the prompts in the order the stand-in received them (:mod:`longctx.llm.prefix_cache`), for the
built-in layout (source text first, instruction last) and, side by side in the same run, for
the layout before it (``bench/prompts_before_prefix_layout/``, used as ``prompts_dir``; the
scheduling is today's in both), at the default settings and with the paper profile
(``params/paper/01_generate_qa.yaml``: judge on, 16 documents in flight) over the same books.

    python bench/bench_generate_cost.py            # writes bench/results/generate_cost.{md,csv}
"""

from __future__ import annotations

import csv
import multiprocessing
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main() -> int:
    from longctx import generate
    from longctx.core.config import from_mapping, load_params
    from longctx.generate.params import GenerateParams

    with tempfile.TemporaryDirectory() as tmp:
        # default method settings; a remote endpoint, so no embedded-server limits apply
        params = from_mapping(GenerateParams, {"corpus": "austen", "output_dir": tmp, "progress": False,
                                               "llm_base_url": "http://stand-in/v1"})
        started = time.perf_counter()
        manifest = generate.run(params, dry_run=True)
        wall = time.perf_counter() - started
    before_dir = str(ROOT / "bench" / "prompts_before_prefix_layout")
    with tempfile.TemporaryDirectory() as tmp:
        before = from_mapping(GenerateParams, {"corpus": "austen", "output_dir": tmp, "progress": False,
                                               "llm_base_url": "http://stand-in/v1", "prompts_dir": before_dir})
        cache_before = generate.run(before, dry_run=True)["prefix_cache"]
    paper = {}
    for name, extra in (("now", {}), ("before", {"prompts_dir": before_dir})):
        with tempfile.TemporaryDirectory() as tmp:
            # the paper profile, sampled on Austen's novels (the hub corpus needs the network)
            paper[name] = generate.run(load_params(GenerateParams, ROOT / "params" / "paper" / "01_generate_qa.yaml", {
                "corpus": "austen", "max_documents": 0, "corpus_shards_dir": "", "output_dir": tmp,
                "progress": False, **extra}), dry_run=True)
    cache = manifest["prefix_cache"]
    totals, counts = manifest["totals"], manifest["counts"]
    rows = [
        ("documents", counts["documents_written"]),
        ("book tokens", manifest["book_tokens"]),
        ("LLM calls", totals["calls"]),
        ("LLM calls per 1,000 book tokens", totals["llm_calls_per_1000_book_tokens"]),
        ("prompt tokens sent", totals["prompt_tokens"]),
        ("prompt tokens per 1,000 book tokens", totals["prompt_tokens_per_1000_book_tokens"]),
        ("completion tokens", totals["completion_tokens"]),
        ("rejected generations (dedup etc.)", counts["rejected_total"]),
        ("pipeline wall time with a zero-latency server (s)", round(wall, 1)),
        ("pipeline overhead per call (ms)", round(1000 * wall / max(1, totals["calls"]), 2)),
    ]
    pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    cache_rows = [  # (label, key of the manifest's prefix_cache, format)
        ("prompt tokens (Llama-3.1 chat template, as a server prefills them)", "prompt_tokens", str),
        ("reusable: shared with an earlier prompt, token-exact", "shared_share", pct),
        ("reusable: in vLLM's 16-token blocks", "block_shared_share", pct),
        (f"reusable: 16-token blocks, LRU cache of {cache.get('cache_tokens', 0):,} tokens",
         "bounded_shared_share", pct),
        ("prefill tokens left, token-exact", "prefill_tokens_left", str),
        ("prefill tokens left, bounded block cache", "bounded_prefill_tokens_left", str),
    ]
    projection = manifest["projection"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "generate_cost.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("metric", "value"), *rows,
                                      *[(f"prefix cache: {label}", cache[key]) for label, key, _ in cache_rows],
                                      *[(f"prefix cache, layout before: {label}", cache_before[key])
                                        for label, key, _ in cache_rows]])
    lines = [
        "# Stage 1 request budget (default settings)",
        "",
        f"{date.today()}, {platform.machine()}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}.",
        "Command: `python bench/bench_generate_cost.py`. Corpus: Jane Austen's six novels; settings: "
        "4,096-token chunks, 12,288-token sections, 25 hierarchical + 50 diverse questions per book; "
        "server: local, zero latency, prompt tokens counted with the Llama-3.1 tokenizer.",
        "",
        "| metric | value |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows],
        "",
        "The cache's figures count prompts as a server prefills them (chat template included), so they "
        "exceed 'prompt tokens sent' (the stand-in's count) slightly.",
        "",
        "## Prefix caching (the same dry run's prompts, in send order)",
        "",
        "| metric | default settings, this layout (source first) | default, layout before | paper profile, "
        "this layout | paper profile, layout before |", "| --- | --- | --- | --- | --- |",
        *[f"| {label} | {fmt(cache[key])} | {fmt(cache_before[key])} | {fmt(paper['now']['prefix_cache'][key])} | "
          f"{fmt(paper['before']['prefix_cache'][key])} |" for label, key, fmt in cache_rows],
        "",
        *[f"Paper profile projected to {p['corpus_documents']:,} books ({name}): {p['prompt_tokens'] / 1e9:.2f} B "
          f"prompt tokens, {p['prefix_cache']['prefill_tokens_left'] / 1e9:.2f} B left to prefill with the bounded "
          f"cache; {p['prefix_cache']['wall_hours']:.1f} h instead of {p['wall_hours']:.1f} h on {p['servers']} servers."
          for name, p in (("this layout", paper["now"]["projection"]), ("layout before", paper["before"]["projection"]))],
        "",
        f"Projected server time with the bounded cache: {projection['prefix_cache']['server_hours']:.2f} "
        f"server-hours instead of {projection['server_hours']:.2f} (at "
        f"{projection['server_prompt_tokens_per_s']:,.0f} prefill + {projection['server_completion_tokens_per_s']:,.0f} "
        "decode tokens/s per server).",
    ]
    (RESULTS / "generate_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
