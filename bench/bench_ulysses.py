"""Ulysses attention (ours) vs DeepSpeed's DistributedAttention, forward + backward, on CPU.

Both run in the same gloo processes on the same sharded q/k/v with the same local kernel,
alternating repetition by repetition so background load hits both alike. Two kernels:
``sdpa`` (``scaled_dot_product_attention``, causal: the real layer) and ``none`` (the local
attention returns ``q + mean_heads(k) + mean_heads(v)``, so q, k and v all get gradients: what
is left is the sequence-parallel machinery itself, i.e. the all-to-alls and layout copies
forward and backward, where the two implementations differ).
Reported: median milliseconds per fwd+bwd and the ratio ours / DeepSpeed (goal: <= 1.0).
Results: ``bench/results/ulysses_cpu.{md,csv}``.

    python bench/bench_ulysses.py                      # world sizes 2 and 4, 7 repetitions
    python bench/bench_ulysses.py --worlds 2 --seq 16384 --reps 11
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from longctx.train import dist, ulysses


def _worker(seq: int, heads: int, kv_heads: int, head_dim: int, reps: int, warmup: int, kernel: str) -> dict:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch.distributed as tdist
    from deepspeed.sequence.layer import DistributedAttention

    par = dist.init(sp=int(os.environ["WORLD_SIZE"]))
    # DeepSpeed's CPU backend would JIT-compile a shared-memory all-reduce op at init (a minute, g++);
    # DistributedAttention's all-to-all goes through torch.distributed, so that op is switched off.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    scale = head_dim ** -0.5

    if kernel == "none":  # both implementations call local_attention through the same name
        ulysses.local_attention = lambda q, k, v, scaling, doc_ids=None: \
            q + k.mean(1, keepdim=True) + v.mean(1, keepdim=True)

    def local(q, k, v):  # DeepSpeed's layout [B, S, H/sp, D] -> same kernel as ours
        return ulysses.local_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale).transpose(1, 2)

    ds = DistributedAttention(local, par.sp_group, scatter_idx=2, gather_idx=1)
    g = torch.Generator().manual_seed(par.rank)
    s = seq // par.sp
    q, k, v = (torch.randn(1, h, s, head_dim, generator=g) for h in (heads, kv_heads, kv_heads))
    grad = torch.randn(1, s, heads, head_dim, generator=g)
    pos = torch.arange(par.sp_rank * s, (par.sp_rank + 1) * s)[None]

    def leaves():  # [B, s, H, D] memory: what q/k/v projections produce
        return [t.transpose(1, 2).contiguous().requires_grad_(True) for t in (q, k, v)]

    def ours():  # transformers hands attention [B, H, s, D] views of that memory
        out, _ = ulysses.ulysses_attention_forward(None, *(t.transpose(1, 2) for t in leaves()), None,
                                                   scaling=scale, position_ids=pos)
        out.backward(grad)

    def deepspeed_attention():  # DistributedAttention takes [B, s, H, D]
        ds(*leaves(), batch_dim_idx=0).backward(grad)

    times = {"ours": [], "deepspeed": []}
    for rep in range(warmup + reps):
        for name, fn in (("ours", ours), ("deepspeed", deepspeed_attention)) if rep % 2 == 0 else \
                (("deepspeed", deepspeed_attention), ("ours", ours)):
            tdist.barrier()
            t0 = time.perf_counter()
            fn()
            tdist.barrier()
            if rep >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--seq", type=int, default=4096, help="global sequence length")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--kernels", nargs="+", default=["sdpa", "none"], choices=["sdpa", "none"])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/results/ulysses_cpu"))
    args = ap.parse_args(argv)
    rows = []
    for world in args.worlds:
        for kernel in args.kernels:
            times = dist.spawn(_worker, world, args.seq, args.heads, args.kv_heads, args.head_dim, args.reps,
                               args.warmup, kernel, timeout_s=1800)[0]
            ours, theirs = statistics.median(times["ours"]), statistics.median(times["deepspeed"])
            best_ours, best_theirs = min(times["ours"]), min(times["deepspeed"])
            rows.append({"world": world, "kernel": kernel, "seq": args.seq, "heads": args.heads,
                         "kv_heads": args.kv_heads, "head_dim": args.head_dim, "reps": args.reps,
                         "ours_ms": round(ours, 2), "deepspeed_ms": round(theirs, 2), "ratio": round(ours / theirs, 3),
                         "ours_min_ms": round(best_ours, 2), "deepspeed_min_ms": round(best_theirs, 2),
                         "ratio_min": round(best_ours / best_theirs, 3)})
            print(rows[-1], flush=True)
    _write(rows, Path(args.out), " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]))


def _write(rows, out: Path, command: str) -> None:
    import csv

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import deepspeed

    head = (f"# Ulysses attention vs DeepSpeed DistributedAttention (CPU, gloo, fwd+bwd)\n\n"
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}\n"
            f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}; one thread "
            f"per process; load average at start {os.getloadavg()[0]:.1f} (shared machine)\n"
            f"- versions: torch {torch.__version__}, deepspeed {deepspeed.__version__}\n"
            f"- command: `python bench/{command}`\n"
            f"- same inputs and the same local SDPA kernel for both, alternating order per repetition; "
            f"median (and fastest) over repetitions after warm-up; ratio = ours / DeepSpeed (goal <= 1.0); "
            f"other jobs share this machine, so single runs vary by about 10%\n\n")
    keys = list(rows[0])
    table = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    table += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    out.with_suffix(".md").write_text(head + "\n".join(table) + "\n", encoding="utf-8")
    print(f"wrote {out.with_suffix('.md')} and .csv")


if __name__ == "__main__":
    main()
