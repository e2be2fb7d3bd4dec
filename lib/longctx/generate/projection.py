"""What a whole stage-1 run will cost, from a dry run over a sample: requests, tokens, wall time.

A dry run (``python -m longctx.generate --params FILE --dry-run --set max_documents=20``) sends
the real pipeline's requests to a stand-in server and counts them. Offline it can only see a
sample, so the projection scales the sample's totals by ``corpus_documents / sampled``, where
``sampled`` counts every document the dry run looked at (written, failed or skipped: a skipped
one is part of the corpus too, it just costs nothing). Token counts of the sample are the
Llama-3.1 tokenizer's (the stand-in's count); completions are the stand-in's, which fill half of
each request's completion budget.

Wall time assumes the servers are the bottleneck (enough requests in flight to keep them busy)
and that one server spends ``prompt / server_prompt_tokens_per_s`` on prefill plus
``completion / server_completion_tokens_per_s`` on decoding, one after the other::

    wall_s = (P / prefill_rate + C / decode_rate) / servers

Adding the two is the conservative choice: vLLM overlaps them in one batch (chunked prefill), so
a real run may be somewhat faster.

Prefix caching (``projection["prefix_cache"]``, from the manifest's ``prefix_cache``: the dry
run's prompts measured in their send order, :mod:`longctx.llm.prefix_cache`): the share of prompt
tokens a server's prefix cache serves, token-exact (unbounded), in vLLM's 16-token blocks
(unbounded) and in blocks within a cache of ``prefix_cache_tokens``; the wall time with caching
counts only the prefill left by the bounded cache (``P x (1 - share)``). It applies to one
server's stream: a fleet of servers keeps it only if requests on one document reach the same
server (a prefix-aware router, or one document's requests per server).

The judge pass (``judge_qa``) is projected either way (``projection["judge"]``): with it on, from
the judge requests the dry run sent; with it off, as what turning it on would add: one request
per QA that passed the gates, whose prompt (the same source text, the QA and a one-line
question) is taken to be as long as the mean QA prompt of the dry run, and whose verdict
(``{"supported": true}``) is ~8 tokens.
"""

from __future__ import annotations

from typing import Any

from .params import GenerateParams

__all__ = ["project", "format_projection", "JUDGE_COMPLETION_TOKENS"]

JUDGE_COMPLETION_TOKENS = 8  # {"supported": true} with the Llama-3.1 tokenizer, end token included


def _judge(manifest: dict[str, Any], params: GenerateParams, scale: float, main_server_s: float) -> dict[str, Any]:
    """What the judge pass costs (on) or would add (off), scaled to the corpus."""
    stages = manifest.get("this_invocation", {}).get("llm_by_stage", {})
    counts, totals = manifest["counts"], manifest["totals"]
    judge = stages.get("judge")
    if params.judge_qa and judge:
        # this invocation's share of the run's calls scales its stage counts to the whole run
        invocation_calls = sum(c.get("calls", 0) for c in stages.values()) or 1
        whole = totals["calls"] / invocation_calls
        requests, prompt, completion = (judge.get("calls", 0) * whole, judge.get("prompt_tokens", 0) * whole,
                                        judge.get("completion_tokens", 0) * whole)
    else:
        qa = [stages[k] for k in ("hierarchical", "diverse") if k in stages]
        qa_calls = sum(c.get("calls", 0) for c in qa)
        per_prompt = sum(c.get("prompt_tokens", 0) for c in qa) / qa_calls if qa_calls else 0.0
        requests = counts.get("hierarchical_qa", 0) + counts.get("diverse_qa", 0)
        prompt, completion = requests * per_prompt, requests * JUDGE_COMPLETION_TOKENS
    requests, prompt, completion = requests * scale, prompt * scale, completion * scale
    server_s = prompt / params.server_prompt_tokens_per_s + completion / params.server_completion_tokens_per_s
    cost = (prompt * params.price_input_per_mtok + completion * params.price_output_per_mtok) / 1e6
    without = main_server_s - server_s if params.judge_qa else main_server_s
    return {"enabled": params.judge_qa, "requests": round(requests), "prompt_tokens": round(prompt),
            "completion_tokens": round(completion), "cost_usd": round(cost, 2),
            "server_hours": server_s / 3600, "wall_hours": server_s / params.projection_servers / 3600,
            "server_time_share": server_s / without if without else 0.0}


def _prefix_cache(manifest: dict[str, Any], params: GenerateParams, prompt: float, completion: float
                  ) -> dict[str, Any] | None:
    """Prefill left after prefix caching, at the shares the dry run measured."""
    measured = manifest.get("prefix_cache")
    if not measured or not measured.get("prompt_tokens"):
        return None
    share = measured.get("bounded_shared_share", measured["block_shared_share"])
    left = prompt * (1 - share)
    server_s = left / params.server_prompt_tokens_per_s + completion / params.server_completion_tokens_per_s
    return {"shared_share": measured["shared_share"], "block_shared_share": measured["block_shared_share"],
            "bounded_shared_share": measured.get("bounded_shared_share"), "cache_tokens": measured.get("cache_tokens"),
            "prefill_tokens_left": round(left), "server_hours": server_s / 3600,
            "wall_hours": server_s / params.projection_servers / 3600}


def project(manifest: dict[str, Any], params: GenerateParams) -> dict[str, Any]:
    """The projection of a dry run's ``manifest`` (from :func:`longctx.generate.stage.run`) to the corpus."""
    counts, totals = manifest["counts"], manifest["totals"]
    # a long document split into windows (longctx.generate.windows) writes one record per window:
    # the sample is counted in corpus documents, its windows apart
    windows, windowed = counts.get("windows", 0), counts.get("documents_windowed", 0)
    sampled = (counts.get("documents_written", 0) + counts.get("documents_failed", 0)
               + counts.get("documents_skipped", 0) - windows + windowed)
    corpus = params.corpus_documents or sampled
    scale = corpus / sampled if sampled else 0.0
    prompt = totals["prompt_tokens"] * scale
    completion = totals["completion_tokens"] * scale
    server_s = prompt / params.server_prompt_tokens_per_s + completion / params.server_completion_tokens_per_s
    wall_s = server_s / params.projection_servers
    return {
        "sampled_documents": sampled, "corpus_documents": corpus, "scale": scale,
        "sampled_windowed": windowed, "sampled_windows": windows,
        "documents_windowed": round(windowed * scale), "windows": round(windows * scale),
        "records": round((sampled - counts.get("documents_skipped", 0) - windowed + windows) * scale),
        "extrapolated": bool(params.corpus_documents) and corpus != sampled,
        "requests": round(totals["calls"] * scale), "prompt_tokens": round(prompt),
        "completion_tokens": round(completion), "cost_usd": round(totals["cost_usd"] * scale, 2),
        "servers": params.projection_servers,
        "server_prompt_tokens_per_s": params.server_prompt_tokens_per_s,
        "server_completion_tokens_per_s": params.server_completion_tokens_per_s,
        "server_hours": server_s / 3600, "wall_hours": wall_s / 3600, "wall_days": wall_s / 86400,
        "judge": _judge(manifest, params, scale, server_s),
        "prefix_cache": _prefix_cache(manifest, params, prompt, completion),
    }


def format_projection(p: dict[str, Any]) -> str:
    """The projection as the few lines ``--dry-run`` prints."""
    if p["extrapolated"]:
        head = (f"Projection for {p['corpus_documents']:,} documents (corpus_documents), extrapolated from the "
                f"{p['sampled_documents']:,} this dry run sampled (x{p['scale']:.1f}; set max_documents to sample more):")
    else:
        head = (f"Projection for the {p['sampled_documents']:,} documents this dry run saw "
                "(set corpus_documents to extrapolate to a whole corpus):")
    lines = [head]
    if p.get("sampled_windowed"):
        lines.append(f"  {p['sampled_windowed']:,} sampled documents were longer than max_window_tokens and became "
                     f"{p['sampled_windows']:,} windows: ~{p['documents_windowed']:,} windowed documents, "
                     f"~{p['records']:,} qa.jsonl records in the corpus")
    lines += [
        f"  {p['requests']:,} requests, {p['prompt_tokens']:,} prompt + {p['completion_tokens']:,} completion tokens, "
        f"cost estimate ${p['cost_usd']:,.2f}",
        f"  {p['server_hours']:,.1f} server-hours at {p['server_prompt_tokens_per_s']:,.0f} prompt + "
        f"{p['server_completion_tokens_per_s']:,.0f} completion tokens/s per server; on {p['servers']} server(s): "
        f"{p['wall_hours']:,.1f} h ({p['wall_days']:.2f} days) of wall time",
    ]
    cache = p.get("prefix_cache")
    if cache:
        bounded = (f", {100 * cache['bounded_shared_share']:.1f} % in a {cache['cache_tokens']:,}-token cache"
                   if cache.get("bounded_shared_share") is not None else "")
        lines.append(f"  prefix caching: {100 * cache['shared_share']:.1f} % of prompt tokens repeat an earlier "
                     f"prompt's prefix ({100 * cache['block_shared_share']:.1f} % in 16-token blocks{bounded}); "
                     f"{cache['prefill_tokens_left']:,} prefill tokens left, {cache['wall_hours']:,.1f} h of wall time")
    judge = p.get("judge")
    if judge:
        what = "of which the judge pass (judge_qa)" if judge["enabled"] else "the judge pass (judge_qa, off) would add"
        lines.append(f"  {what}: {judge['requests']:,} requests, {judge['prompt_tokens']:,} prompt tokens, "
                     f"${judge['cost_usd']:,.2f}, {judge['wall_hours']:,.1f} h of wall time "
                     f"(+{100 * judge['server_time_share']:.0f} % of the server time without it)")
    return "\n".join(lines)
