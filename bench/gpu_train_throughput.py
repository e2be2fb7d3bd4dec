"""One-GPU training of the Llama-3.1-8B shape: longest context that fits, tokens/s and MFU.

Random bf16 weights of Llama-3.1-8B's shape (8.0B parameters, vocab 128256), one sample of
``L`` tokens with 10% answer tokens, forward + backward (bf16 gradients; no optimizer step: the
AdamW state of 8B parameters does not fit one GPU next to the activations, FSDP spreads it
across GPUs in real runs). Variants, side by side in one run:

* ``hf``: plain transformers, ``attn_implementation="sdpa"``, non-reentrant gradient
  checkpointing, the model's own loss over full ``L x 128256`` logits;
* ``ours``: float64 RoPE module, Ulysses attention (sp=1: flash-attn when installed, else SDPA),
  checkpoint per decoder layer, chunked answer-only loss (``longctx.train.loss``);
* ``ours_tiled_offload``: ``ours`` with tiled MLP (8K-token tiles, ``longctx.train.tiled_mlp``) and as
  many layer checkpoints offloaded to pinned host memory as ``longctx.train.memory.plan`` says are
  needed at each length (``longctx.train.offload``), within the host memory available: every
  ``s``-th of them stored where the host needs it (``checkpoint_stride: auto``), in one exactly sized
  pinned buffer (``longctx.train.host_pool``, as ``host_pool: true`` trains);
* ``ours_offload_params``: ``ours_tiled_offload`` with weights and gradients in host memory too
  (FSDP2 ``fully_shard`` with ``CPUOffloadPolicy`` on one rank, as ``offload_params: true``
  trains): the GPU holds the layers being computed and their gradients in flight;
* ``alst``: DeepSpeed's ALST single-GPU recipe on the same HF model, where deepspeed imports:
  its ``TiledMLP`` (tiles of ``hidden_size`` tokens), its checkpoint offload
  (``CheckpointHiddenStatesOffload``) and its ``TiledFusedLogitsLoss`` over all tokens (tiles of
  at most 1 GiB of fp32 logits).

Per variant a search with single steps finds the longest ``L`` that fits: doubling from
``--start`` until a step runs out of memory, then bisection down to ``--resolution`` tokens. A
probe whose predicted time (1.25 x the last step's time x ``(L / L_last) ** 2``) would pass the
variant's share of ``--budget-s`` is not started: the row says so, and the maximum is then a
lower bound. The probes at 16K, 32K, 64K, 128K, ... are the common lengths for tokens/s and MFU
(one warm-up step at ``--start`` first). Peak memory is ``max_memory_allocated``; for our
variants the memory estimate of the same setting is printed next to it (the calibration data).

FLOPs per token: ``6 N_layers_matmul + 6 f V d + 6 n_layers d L`` (causal attention, half of
PaLM's ``12 n_layers d L``); ``f`` is the fraction of tokens projected to the vocabulary: the
answer tokens (0.1) for ours, all (1.0) for hf and alst. Recomputation is not counted. Peak bf16
dense FLOP/s 989e12 (H100/H200 SXM; ``--peak-tflops``).

    python bench/gpu_train_throughput.py            # one H100/H200, within 8 minutes
    python bench/gpu_train_throughput.py --smoke    # CPU, tiny model, a real memory limit: checks the script
    python bench/gpu_train_throughput.py --fake     # CPU, real 8B shape on fake tensors: tracked peak vs estimate

The variants themselves (one model each, set up the way it trains) are in ``bench/gpu_train_variants.py``.

Results: ``bench/results/gpu_train_throughput.{md,csv}`` (``..._smoke`` for ``--smoke``,
``gpu_train_memory_fake`` for ``--fake``). ``hfu``: hardware FLOPs utilisation, the FLOPs the GPU
executes (recomputation included, ``executed_flops_per_token``); ``fake_gib``: the tracked peak of
the same setting from the committed ``--fake`` table; ``reserved_gib``: ``max_memory_reserved``.
Our variants run every RMSNorm tiled (``longctx.train.tiled_norm``) and the one-buffer loss.

What the GPU machine needs (its image has torch and transformers; nothing can be downloaded
there): this working tree (``PYTHONPATH=lib``); wheels to carry for the optional parts:
``deepspeed`` (pure Python for what the ``alst`` variant uses: ``TiledMLP``,
``TiledFusedLogitsLoss``, checkpoint offload) and its pure-Python dependencies (``hjson``,
``ninja``, ``py-cpuinfo``, ``msgpack``), ``flash-attn`` built for the image's torch/CUDA (without
it ``ours`` uses SDPA, whose flash backend also keeps no ``S x S`` tensor), ``liger-kernel``
(Triton, for a fused-kernel comparison; not required).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_train_variants import (GIB, LLAMA_31_8B, TINY, VARIANTS, Variant,  # noqa: E402
                                batch, one_rank_fake_group)

SMOKE_HEADROOM = 384 * 2**20     # bytes of address space the smoke run may add: hf's full logits hit it first


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and ("out of memory" in str(err) or "can't allocate memory" in str(err)
                                           or "not enough memory" in str(err)))


def probe(var: Variant, length: int, peak_flops: float) -> dict:
    """One step at ``length``: ``ok`` with time, throughput and memory, or ``OOM``."""
    row = {"variant": var.name, "tokens": length}
    sync = torch.cuda.synchronize if var.device.type == "cuda" else (lambda: None)
    try:
        row.update(var.prepare(length))
        ids, labels = batch(length, var.dims["vocab_size"], var.device)
        if var.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(var.device)
        sync()
        t0 = time.perf_counter()
        var.step(ids, labels)
        sync()
        seconds = time.perf_counter() - t0
    except Exception as err:  # noqa: BLE001 - one variant's failure must not cost the others their slot
        for p in var.lm.parameters():
            p.grad = None
        row["status"] = "OOM" if _is_oom(err) else f"error: {type(err).__name__}: {str(err)[:120]}"
        return row
    finally:
        gc.collect()
        if var.device.type == "cuda":
            torch.cuda.empty_cache()
            if hasattr(torch._C, "_host_emptyCache"):   # pinned blocks of one length do not serve the next
                torch._C._host_emptyCache()
    peak = torch.cuda.max_memory_allocated(var.device) / GIB if var.device.type == "cuda" else float("nan")
    tps = length / seconds
    mfu = tps * var.flops_per_token(length) / peak_flops if peak_flops else float("nan")
    hfu = tps * var.executed_flops_per_token(length) / peak_flops if peak_flops else float("nan")
    reserved = torch.cuda.max_memory_reserved(var.device) / GIB if var.device.type == "cuda" else float("nan")
    row.update(status="ok", step_s=round(seconds, 3), tokens_per_s=round(tps, 1), mfu=round(mfu, 4),
               hfu=round(hfu, 4), peak_gib=round(peak, 2), reserved_gib=round(reserved, 2))
    fake = _FAKE_TABLE.get((var.name, length, row.get("offloaded", ""), row.get("stride", 1)))
    if fake:
        row["fake_gib"] = fake
    if var.store is not None:
        row["host_gib"] = float(f"{var.store.peak_host_bytes / GIB:.3g}")
    if "est_gib" in row and peak == peak:
        row["est_over_peak"] = round(row["est_gib"] / peak, 3)
    return row


def _fake_table() -> dict:
    """(variant, tokens, offloaded, stride) -> tracked peak GiB from the committed ``--fake`` table."""
    path = ROOT / "bench/results/gpu_train_memory_fake.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {(r["variant"], int(r["tokens"]), int(r["offloaded"]) if r["offloaded"] else "",
                 int(r.get("stride") or 1)): float(r["peak_gib"]) for r in csv.DictReader(f)}


_FAKE_TABLE = _fake_table()


def search(var: Variant, start: int, resolution: int, max_len: int, deadline: float, peak_flops: float) -> list[dict]:
    """Doubling from ``start`` until OOM, then bisection to ``resolution``; single steps, within ``deadline``."""
    rows, ok, bad, length = [], None, None, start
    last = None
    while start <= length <= max_len:
        if last is not None:
            predicted = 1.25 * last["step_s"] * (length / last["tokens"]) ** 2   # margin: first pinned allocations
            if time.perf_counter() + predicted > deadline:
                rows.append({"variant": var.name, "tokens": length, "status": f"budget: ~{predicted:.0f} s "
                             "would pass this variant's share"})
                print(rows[-1], flush=True)
                break
        row = probe(var, length, peak_flops)
        rows.append(row)
        print(row, flush=True)
        if row["status"].startswith("error"):
            break
        if row["status"] == "ok":
            ok, last = length, row
        else:
            bad = length
        if bad is None:
            length *= 2
            continue
        low = ok or 0
        mid = (low + bad) // 2 // resolution * resolution
        if mid <= low or bad - low <= resolution:
            break
        length = mid
    return rows


def summary(rows: list[dict], variants: list[str]) -> list[str]:
    out = ["| variant | longest that fits | limit | tok/s @ 32K | MFU @ 32K | tok/s @ 128K | MFU @ 128K | peak GiB there |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        oks = [r for r in mine if r.get("status") == "ok"]
        if not mine:
            continue
        if not oks:
            out.append(f"| {name} | none | {mine[-1].get('status')} | | | | | |")
            continue
        best = max(oks, key=lambda r: r["tokens"])
        stops = [r for r in mine if r.get("status") != "ok"]
        limit = ", ".join(f"{r['status'].split(':')[0]} at {r['tokens']}" for r in stops) or "max length probed"
        at = {r["tokens"]: r for r in oks}
        cells = []
        for length in (32768, 131072):
            r = at.get(length)
            cells += [str(r["tokens_per_s"]), str(r["mfu"])] if r else ["", ""]
        out.append(f"| {name} | {best['tokens']} | {limit} | " + " | ".join(cells) + f" | {best.get('peak_gib')} |")
    return out


def fake_probe(name: str, length: int, dims: dict = LLAMA_31_8B, gpu_gib: float = 75.6, host_gib: float = 96.0,
               tile_tokens: int = 8192, offload: int | None = None, norm_tile_tokens: int = 8192,
               stride: int | None = None, host_pool: bool = False) -> dict:
    """One forward + backward of ``name`` at ``length`` tokens on fake tensors (no memory, no GPU):
    the tracked peak beside the estimate (``longctx.train.memtrack``). ``offload``: layers whose
    checkpoints go to host memory, ``stride``: every how-many-th of them is stored; default what
    the plan chooses for ``gpu_gib``/``host_gib``; ``host_pool``: the stored ones in one exact host
    buffer (``longctx.train.host_pool.HostPool``)."""
    from longctx.train import memtrack
    from longctx.train.loss import shift_labels

    ids, labels = batch(length, dims["vocab_size"], torch.device("cpu"))
    shifted = shift_labels(labels)
    rows = (shifted.reshape(-1) != -100).nonzero().squeeze(1)
    answers = max(int(rows.numel()), 1)
    t0 = time.perf_counter()
    if name == "ours_offload_params":   # the group and mesh outside fake mode (the mesh reads real tensors)
        from longctx.train import dist

        one_rank_fake_group()
        dist.init(sp=1, one_rank_group=True)
    with memtrack.fake_mode() as mode:
        var = Variant(name, dims, length, torch.device("cpu"), torch.bfloat16, gpu_gib, host_gib, tile_tokens,
                      offload=offload, norm_tile_tokens=norm_tile_tokens, stride=stride, host_pool=host_pool)
        row = {"variant": name, "tokens": length, "mlp_tile": var.tile, "norm_tile": norm_tile_tokens,
               **var.prepare(length)}
        fake_ids, fake_shifted, fake_rows = (mode.from_tensor(t) for t in (ids, shifted, rows))
        params = [p for p in var.lm.parameters()] + [b for b in var.lm.buffers()]
        host_params = params if var.name == "ours_offload_params" else []
        stores = [var.store] if var.store is not None else []
        result = memtrack.track(lambda: var.step(fake_ids, labels, fake_shifted, answers),
                                [] if host_params else params, answer_rows=lambda y: fake_rows, stores=stores,
                                host_params=host_params)
    row.update({k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.gib().items()})
    if "est_gib" in row:
        row["est_over_peak"] = round(row["est_gib"] / row["peak_gib"], 3)
    row.update(status="fake", ops=result.ops, fake_s=round(time.perf_counter() - t0, 1), bytes=result)
    if name == "ours_offload_params":   # leave no fake process group behind
        dist.cleanup()
    return row


FAKE_KEYS = ["variant", "tokens", "mlp_tile", "norm_tile", "offloaded", "stride", "host_pool", "peak_gib", "est_gib", "est_over_peak",
             "weights_gib", "grads_gib", "act_gib", "host_pinned_gib", "est_host_gib", "where", "fake_s"]


def fake_main(args, argv) -> None:
    """``--fake``: every variant at every length on fake tensors; table to ``..._fake.{md,csv}``."""
    variants = [v for v in args.variants if v != "alst"]     # DeepSpeed's ops are not traced here
    out = Path(args.out or ROOT / "bench/results/gpu_train_memory_fake")
    rows = []
    for length in args.lengths:
        for name in variants:
            rows.append(fake_probe(name, length, gpu_gib=args.gpu_gib, host_gib=args.host_gib,
                                   tile_tokens=args.tile_tokens))
            print({k: rows[-1].get(k, "") for k in FAKE_KEYS}, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FAKE_KEYS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in FAKE_KEYS} for r in rows)
    command = " ".join(["gpu_train_throughput.py", *(argv if argv is not None else sys.argv[1:])])
    head = (f"# Tracked peak (fake tensors) and the estimate, Llama-3.1-8B shape, one GPU\n\n"
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; torch {torch.__version__}; "
            f"{os.cpu_count()} CPU cores; command: `python bench/{command}`\n"
            f"- plan budgets: GPU {args.gpu_gib} GiB, host {args.host_gib} GiB; forward + backward, bf16 weights "
            "and gradients, 10% answer tokens\n- peak: live storage bytes on the device at the peak "
            "(``longctx.train.memtrack``): what `max_memory_allocated` shows less rounding and fragmentation; "
            "host: pinned bytes (power-of-two blocks)\n\n")
    table = ["| " + " | ".join(FAKE_KEYS) + " |", "|" + " --- |" * len(FAKE_KEYS)]
    table += ["| " + " | ".join(str(r.get(k, "")) for k in FAKE_KEYS) + " |" for r in rows]
    out.with_suffix(".md").write_text(head + "\n".join(table) + "\n", encoding="utf-8")
    print(f"wrote {out.with_suffix('.md')}", flush=True)


def _host_gib() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return 0.8 * info["MemAvailable"] * 1024 / GIB     # leave room for the process itself


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, an address-space limit as memory")
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--start", type=int, default=16384, help="first probe length (tokens)")
    ap.add_argument("--resolution", type=int, default=16384, help="bisection stops at this many tokens")
    ap.add_argument("--max-len", type=int, default=2**21)
    ap.add_argument("--tile-tokens", type=int, default=8192)
    ap.add_argument("--budget-s", type=float, default=420.0, help="all variants together (8-minute slot)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak per GPU (H100/H200 SXM)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--fake", action="store_true", help="no GPU: tracked peak (fake tensors) beside the estimate, "
                    "real 8B shape, at --lengths")
    ap.add_argument("--lengths", nargs="+", type=int, default=[32768, 131072, 524288, 1048576])
    ap.add_argument("--gpu-gib", type=float, default=75.6, help="--fake: the plan's GPU budget (0.95 x H100)")
    ap.add_argument("--host-gib", type=float, default=96.0, help="--fake: the plan's host budget")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if args.fake:
        return fake_main(args, argv)
    if args.smoke:
        device, dtype, dims = torch.device("cpu"), torch.float32, TINY
        args.start, args.resolution, args.max_len, args.tile_tokens = 256, 256, 16384, 512
        args.budget_s = min(args.budget_s, 150.0)
        torch.set_num_threads(1)
        gpu_gib, host_gib = 1.0, 1.0
    else:
        if not torch.cuda.is_available():
            sys.exit("no GPU: run with --smoke on CPU")
        device, dtype, dims = torch.device("cuda"), torch.bfloat16, LLAMA_31_8B
        gpu_gib, host_gib = 0.95 * torch.cuda.mem_get_info()[1] / GIB, _host_gib()
    peak_flops = args.peak_tflops * 1e12 if device.type == "cuda" else 0.0
    rows, env = [], []
    out = Path(args.out or ROOT / "bench/results" / ("gpu_train_throughput_smoke" if args.smoke else "gpu_train_throughput"))
    command = " ".join(["gpu_train_throughput.py", *(argv if argv is not None else sys.argv[1:])])
    for i, name in enumerate(args.variants):
        left = args.budget_s - (time.perf_counter() - start)
        deadline = time.perf_counter() + left / (len(args.variants) - i)   # unused time passes on
        if args.smoke:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        try:
            var = Variant(name, dims, args.max_len, device, dtype, gpu_gib, host_gib, args.tile_tokens,
                          host_pool=True)    # as training does (host_pool: true)
        except ImportError as err:
            rows.append({"variant": name, "tokens": "", "status": f"not installed: {err}"})
            print(rows[-1], flush=True)
            continue
        if args.smoke:   # a real memory limit on CPU, per variant: the address space in use + SMOKE_HEADROOM
            used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            resource.setrlimit(resource.RLIMIT_AS, (used + SMOKE_HEADROOM, resource.RLIM_INFINITY))
            env.append(f"{name}: smoke memory limit {used / GIB:.2f} GiB of address space in use + "
                       f"{SMOKE_HEADROOM // 2**20} MiB (setrlimit after the build), so probes really run out of memory")
        probe(var, args.start, peak_flops)            # warm-up (kernels, allocator), not recorded
        rows += search(var, args.start, args.resolution, args.max_len, deadline, peak_flops)
        del var
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.smoke:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        _write(rows, args.variants, out, device, command, time.perf_counter() - start, gpu_gib, host_gib, env)


def _write(rows, variants, out: Path, device, command: str, seconds: float, gpu_gib, host_gib, env) -> None:
    import transformers
    from longctx.train.ulysses import HAS_FLASH_ATTN

    keys = ["variant", "tokens", "status", "step_s", "tokens_per_s", "mfu", "hfu", "peak_gib", "reserved_gib",
            "est_gib", "fake_gib", "est_over_peak", "offloaded", "stride", "host_gib", "est_host_gib"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in keys} for r in rows)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    try:
        import deepspeed
        ds = deepspeed.__version__
    except ImportError:
        ds = "not installed"
    head = (f"# One-GPU training, Llama-3.1-8B shape: longest context and throughput per variant\n\n"
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; run time {seconds:.0f} s\n"
            f"- device: {gpu}; {platform.platform()}; memory budget for the offload plan: GPU {gpu_gib:.1f} GiB, "
            f"host {host_gib:.1f} GiB\n"
            f"- versions: torch {torch.__version__}, transformers {transformers.__version__}, deepspeed {ds}, "
            f"flash-attn {'yes' if HAS_FLASH_ATTN else 'no'}\n- command: `python bench/{command}`\n"
            + "".join(f"- {line}\n" for line in env) +
            "- forward + backward, no optimizer step, 10% answer tokens; one step per probe; search, FLOP and MFU "
            "conventions in the script's docstring\n\n")
    table = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    table += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    text = head + "## Summary\n\n" + "\n".join(summary(rows, variants)) + "\n\n## Probes\n\n" + "\n".join(table) + "\n"
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(f"wrote {out.with_suffix('.md')} and .csv after {seconds:.0f} s", flush=True)  # after every variant


if __name__ == "__main__":
    main()
