"""Chunked answer-only loss vs the Hugging Face full-logits loss: peak memory and time, on CPU.

Workload: 32K tokens of final hidden states, 10% of them answer tokens, an output projection to
the vocabulary; forward + backward (gradients of hidden states and projection). The baseline
builds the full ``tokens x vocab`` logits and calls transformers' ``ForCausalLMLoss``; ours is
``longctx.train.loss.answer_loss_sum`` (answer rows only, ``chunk`` rows at a time, recomputed in
backward). Each measurement runs in a fresh process; peak memory is the growth of the peak
resident set over the inputs (``ru_maxrss``). Medians over repetitions, alternating order.
Goals: peak memory <= 1/10 of the baseline; time reported. Results:
``bench/results/loss_cpu.{md,csv}``.

    python bench/bench_loss.py                         # 32768 tokens, hidden 256, vocab 16384
    python bench/bench_loss.py --vocab 32000 --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))


def _child(kind: str, tokens: int, hidden: int, vocab: int, answer_fraction: float, chunk: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    from longctx.train.loss import answer_loss_sum, shift_labels
    from transformers.loss.loss_utils import ForCausalLMLoss

    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, tokens, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) / hidden ** 0.5
    ids = torch.randint(0, vocab, (1, tokens), generator=g)
    labels = torch.where(torch.rand(1, tokens, generator=g) < answer_fraction, ids, torch.full_like(ids, -100))
    h.requires_grad_(True)
    w.requires_grad_(True)

    def run(h, labels):
        h.grad = w.grad = None
        if kind == "hf":
            loss = ForCausalLMLoss(h @ w.t(), labels, vocab_size=vocab)
        else:
            shifted = shift_labels(labels)
            total, n = answer_loss_sum(h, w, shifted, chunk_tokens=chunk)
            loss = total / max(n, 1)
        loss.backward()
        return loss.item()

    run(h[:, :64].detach().requires_grad_(True), labels[:, :64])  # lazy kernel/library set-up, not measured
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    value = run(h, labels)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"kind": kind, "seconds": seconds, "peak_mb": peak / 1024, "loss": value}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--answer-fraction", type=float, default=0.1)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", choices=["hf", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench/results/loss_cpu"))
    args = ap.parse_args(argv)
    shape = (args.tokens, args.hidden, args.vocab, args.answer_fraction, args.chunk)
    if args.child:
        print(json.dumps(_child(args.child, *shape)))
        return
    runs = {"hf": [], "ours": []}
    for rep in range(args.reps):
        for kind in (("hf", "ours") if rep % 2 == 0 else ("ours", "hf")):
            cmd = [sys.executable, __file__, "--child", kind, "--tokens", str(args.tokens), "--hidden", str(args.hidden),
                   "--vocab", str(args.vocab), "--answer-fraction", str(args.answer_fraction), "--chunk", str(args.chunk)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            runs[kind].append(json.loads(out))
            print(runs[kind][-1], flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "peak_mb")} for k, v in runs.items()}
    row = {"tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab, "answer_fraction": args.answer_fraction,
           "chunk": args.chunk, "reps": args.reps,
           "hf_peak_mb": round(med["hf"]["peak_mb"]), "ours_peak_mb": round(med["ours"]["peak_mb"]),
           "memory_ratio": round(med["ours"]["peak_mb"] / med["hf"]["peak_mb"], 4),
           "hf_s": round(med["hf"]["seconds"], 3), "ours_s": round(med["ours"]["seconds"], 3),
           "time_ratio": round(med["ours"]["seconds"] / med["hf"]["seconds"], 3),
           "loss_abs_diff": abs(runs["hf"][0]["loss"] - runs["ours"][0]["loss"])}
    print(row)
    _write(row, Path(args.out), " ".join(["bench_loss.py", *(argv if argv is not None else sys.argv[1:])]))


def _write(row: dict, out: Path, command: str) -> None:
    import csv

    import torch
    import transformers

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    head = (f"# Chunked answer-only loss vs Hugging Face full-logits loss (CPU, fp32, fwd+bwd)\n\n"
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}\n"
            f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}; one thread; "
            f"load average at start {os.getloadavg()[0]:.1f} (shared machine)\n"
            f"- versions: torch {torch.__version__}, transformers {transformers.__version__}\n"
            f"- command: `python bench/{command}`\n"
            f"- peak = growth of the process's peak resident memory during one fwd+bwd, fresh process per "
            f"measurement; medians; ratios = ours / HF (goal: memory <= 0.1)\n\n")
    keys = list(row)
    table = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys), "| " + " | ".join(str(row[k]) for k in keys) + " |"]
    out.with_suffix(".md").write_text(head + "\n".join(table) + "\n", encoding="utf-8")
    print(f"wrote {out.with_suffix('.md')} and .csv")


if __name__ == "__main__":
    main()
