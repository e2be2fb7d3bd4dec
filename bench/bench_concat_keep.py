"""Benchmark stage 2's planner at paper scale: which questions survive concatenation, by level.

    ./dev bench concat_keep                    # the paper's four stages, 7,772 synthetic books
    ./dev bench concat_keep --sigma 0.9        # a wider length distribution
    ./dev bench concat_keep --lengths FILE     # real lengths: a qa.jsonl (n_tokens) or one integer a line
    ./dev bench concat_keep --median 250000    # long books, split by stage 1 into windows (the default)
    ./dev bench concat_keep --median 250000 --window-tokens 0   # ... placed whole or cut, as before issue 19 §4

Only the planner runs (no text, no tokenising of books, no model): books are text-free stage-1
records (``longctx.concat.synthetic_books``) with the project's own walk (25 hierarchical questions over
4,096-token chunks and 12,288-token sections, 50 diverse) and lengths drawn lognormal around a
100K-token median (the issue's simulation). Each stage plans its samples with the paper's
parameters (``params/paper/02_concatenate.yaml``: 9 diverse, revisits p = 0.6 x 3, fill 95 %,
no document reused within a stage) and counts, per level, the questions Algorithm 2 would ask of
the chosen documents uncut (planned) and the questions the samples keep (kept).

Books longer than ``--window-tokens`` (default: stage 1's ``max_window_tokens``, derived from
these stages' slots) are split as stage 1 splits them (:mod:`longctx.generate.windows`: greedy, at
4,096-token chunk boundaries); each window is a document of its own with its own walk.

Goal (issues 8 and 19 §4): at least 90 % of global and section questions kept at every paper
stage, on a 250K-token median corpus as on a 100K one.
Results: bench/results/concat_keep.md and .csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from longctx.concat.stage import ConcatConfig, Concatenator
from longctx.core.config import load_params, project_root
from longctx.concat.plan import FITS, LEVELS
from longctx.concat.synthetic_books import lognormal_lengths, synthetic_store
from longctx.generate.windows import DEFAULT_WINDOW_TOKENS, window_bounds

ROOT = project_root()
RESULTS = ROOT / "bench" / "results"
PAPER_BOOKS = 7772  # Together long books, the paper's stage-1 corpus


def read_lengths(path: Path) -> np.ndarray:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line)["n_tokens"] if line.startswith("{") else int(line))
    return np.asarray(out, dtype=np.int64)


CHUNK_TOKENS = 4096  # the synthetic books' chunks (synthetic_store's default)


def windowed(lengths: np.ndarray, max_tokens: int) -> np.ndarray:
    """Lengths of the documents stage 1 makes of books of ``lengths``: windows of long ones."""
    out = []
    for n in (int(x) for x in lengths):
        spans = [(s, min(s + CHUNK_TOKENS, n)) for s in range(0, n, CHUNK_TOKENS)]
        bounds = window_bounds(spans, max_tokens) if max_tokens and n > max_tokens else [(0, len(spans))]
        out += [spans[b - 1][1] - spans[a][0] for a, b in bounds]
    return np.asarray(out, dtype=np.int64)


def run_stage(concat: Concatenator, spec) -> dict:
    start = time.perf_counter()
    planned = dict.fromkeys(LEVELS, 0)
    kept = dict.fromkeys(LEVELS, 0)
    fits = dict.fromkeys(FITS, 0)
    docs = cut = tokens_cut = tokens = 0
    for plan in concat.plans(spec):
        for k in LEVELS:
            planned[k] += plan.planned[k]
            kept[k] += plan.kept[k]
        fits[plan.fit] += 1
        docs += len(plan.documents)
        cut += plan.n_documents_cut
        tokens_cut += plan.n_tokens_cut
        tokens += plan.n_tokens
    row = {"stage": spec.name, "target_tokens": spec.target_tokens, "n_samples": spec.n_samples,
           "docs_per_sample": spec.docs_per_sample or "fill", "documents": docs, "documents_cut": cut,
           "tokens_cut": tokens_cut, "fill_mean": tokens / spec.n_samples / spec.target_tokens,
           **{f"fit_{k}": v for k, v in fits.items()}, "seconds": round(time.perf_counter() - start, 1)}
    for k in LEVELS:
        row[f"{k}_planned"], row[f"{k}_kept"] = planned[k], kept[k]
        row[f"{k}_kept_fraction"] = kept[k] / planned[k] if planned[k] else float("nan")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--books", type=int, default=PAPER_BOOKS, help="synthetic books to draw")
    parser.add_argument("--median", type=float, default=100_000, help="median book length in tokens")
    parser.add_argument("--sigma", type=float, default=0.6, help="lognormal sigma of book lengths")
    parser.add_argument("--lengths", type=Path, help="real lengths instead (qa.jsonl or one int a line)")
    parser.add_argument("--window-tokens", type=int, default=DEFAULT_WINDOW_TOKENS,
                        help="stage 1's max_window_tokens: longer books become windows (0 = whole books)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="concat_keep", help="results file stem under bench/results/")
    args = parser.parse_args(argv)

    if args.lengths:
        lengths, source = read_lengths(args.lengths), f"lengths of {args.lengths}"
    else:
        lengths = lognormal_lengths(args.books, args.median, args.sigma, seed=args.seed)
        source = (f"{args.books:,} synthetic books, lognormal lengths (median {args.median:,.0f}, "
                  f"sigma {args.sigma}, clipped to 8K..1M tokens)")
    documents = windowed(lengths, args.window_tokens)
    split = int((lengths > args.window_tokens).sum()) if args.window_tokens else 0
    windows = (f"max_window_tokens {args.window_tokens:,}: {split:,} books split, {len(documents):,} documents "
               f"(median {int(np.median(documents)):,} tokens)" if args.window_tokens
               else "max_window_tokens 0: books whole")
    t0 = time.perf_counter()
    store = synthetic_store(documents, seed=args.seed)
    cfg = load_params(ConcatConfig, ROOT / "params/paper/02_concatenate.yaml", {"seed": args.seed})
    concat = Concatenator(cfg, store=store)
    concat.check()
    rows = []
    for spec in cfg.stages:
        rows.append(run_stage(concat, spec))
        r = rows[-1]
        print(f"{r['stage']}: global {r['global_kept']}/{r['global_planned']}, section "
              f"{r['section_kept']}/{r['section_planned']}, cut {r['documents_cut']}/{r['documents']} "
              f"documents, {r['seconds']}s", file=sys.stderr)
    seconds = time.perf_counter() - t0

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{args.out}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pct = lambda r, k: f"{100 * r[f'{k}_kept_fraction']:.1f} % ({r[f'{k}_kept']:,}/{r[f'{k}_planned']:,})"
    lines = [
        "# Stage 2: questions kept by concatenation, per level (planner only)", "",
        f"Input: {source}; {int(np.median(lengths)):,} median, {int(lengths.min()):,}..{int(lengths.max()):,} "
        f"tokens; {windows}; stage-1 walk: 25 hierarchical + 50 diverse per document, 4,096-token chunks.",
        "Stages and parameters: `params/paper/02_concatenate.yaml` (no reuse within a stage). "
        f"Command: `./dev bench concat_keep {' '.join(argv if argv is not None else sys.argv[1:])}`; "
        f"{seconds:.0f} s in all.", "",
        "Planned = what Algorithm 2 asks of the chosen documents uncut (all their hierarchical "
        "questions, 9 diverse each, 3 per revisit coin); kept = in the samples. Goal: >= 90 % of "
        "global and section questions kept at every stage.", "",
        "| stage | samples | global | section | chunk | diverse | revisit | documents cut | tokens cut "
        "| fits whole / one cut / several | fill mean |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['n_samples']:,} | {pct(r, 'global')} | {pct(r, 'section')} | "
                     f"{pct(r, 'chunk')} | {pct(r, 'diverse')} | {pct(r, 'revisit')} | "
                     f"{r['documents_cut']:,} of {r['documents']:,} | {r['tokens_cut']:,} | "
                     f"{r['fit_whole']:,} / {r['fit_one_cut']:,} / {r['fit_cuts']:,} | {r['fill_mean']:.3f} |")
    ok = all(r["global_kept_fraction"] >= 0.9 and r["section_kept_fraction"] >= 0.9 for r in rows)
    lines += ["", f"Goal met at every stage: **{'yes' if ok else 'no'}**.", ""]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
