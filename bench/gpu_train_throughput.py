"""One-GPU training throughput of the Llama-3.1-8B architecture: our stack vs plain Hugging Face.

Random bf16 weights of Llama-3.1-8B's shape (8.0B parameters, vocab 128256), one sample of
``L`` tokens with 10% answer tokens, forward + backward (bf16 gradients; no optimizer step: the
AdamW state of 8B parameters does not fit one GPU next to the activations, and FSDP spreads it
across GPUs in real runs). For L = 16K, 32K, 64K, 128K and upward until out of memory (or until
the time budget would be exceeded), both variants in one run:

* ``ours``:  float64 RoPE module, Ulysses attention implementation (sp=1: flash-attn when
  installed, else SDPA's flash kernel), activation checkpointing per decoder layer
  (``checkpoint_wrapper``), chunked answer-only loss (``longctx.loss``);
* ``hf``:    the same model with ``attn_implementation="sdpa"``, ``gradient_checkpointing_enable()``
  and the model's own loss over full ``L x 128256`` logits.

Reported per (variant, L): tokens/s, MFU, peak GPU memory (``max_memory_allocated``), or OOM.
FLOP convention: per token ``6 * N_matmul + 6 * n_layers * d_model * L`` with ``N_matmul`` the
parameters used in matrix products (all but the input embedding) and the second term causal
attention (half of PaLM's ``12 * n_layers * d * L``); recomputation from activation checkpointing
is not counted; peak bf16 dense FLOP/s: 989e12 (H100/H200 SXM), override with ``--peak-tflops``.

    python bench/gpu_train_throughput.py            # one H100/H200, about 6-8 minutes
    python bench/gpu_train_throughput.py --smoke    # CPU, tiny model: checks that the script runs

Results: ``bench/results/gpu_train_throughput.{md,csv}`` (``..._smoke`` for ``--smoke``).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

LLAMA_31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)


def build(variant: str, dims: dict, max_len: int, device: torch.device, dtype: torch.dtype):
    from longctx import dist, rope, ulysses
    from longctx.loss import AnswerOnlyLM
    from longctx.train_model import apply_activation_checkpointing
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**{**dims, "max_position_embeddings": max(dims["max_position_embeddings"], max_len)},
                         rope_parameters={"rope_type": "default", "rope_theta": rope.scaling_law_theta(max_len)},
                         tie_word_embeddings=False, use_cache=False, attn_implementation="sdpa")
    with torch.device(device):  # random init straight on the GPU (8B on the CPU takes minutes)
        lm = AutoModelForCausalLM.from_config(config, dtype=dtype)
    lm.to(device).train()
    if variant == "hf":
        if hasattr(lm, "activation_checkpointing_enable"):      # transformers >= 5.2x
            lm.activation_checkpointing_enable({"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return lm
    dist.init(sp=1)
    rope.install_rope(lm)
    ulysses.enable(lm)
    apply_activation_checkpointing(lm)
    return AnswerOnlyLM(lm, chunk_tokens=1024)


def step(variant: str, model, ids: torch.Tensor, labels: torch.Tensor) -> None:
    from longctx.loss import shift_labels

    if variant == "hf":
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
    else:
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        shifted = shift_labels(labels, pos)
        loss, _, _ = model(ids, shifted, pos, loss_scale=1.0 / max(int((shifted != -100).sum()), 1))
    loss.backward()
    for p in model.parameters():
        p.grad = None


def flops_per_token(dims: dict, length: int) -> float:
    d, i, layers = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
    hd = d // dims["num_attention_heads"]
    per_layer = d * hd * (2 * dims["num_attention_heads"] + 2 * dims["num_key_value_heads"]) + 3 * d * i
    matmul_params = layers * per_layer + dims["vocab_size"] * d       # + output head; input embedding is a lookup
    return 6 * matmul_params + 6 * layers * d * length


def measure(variant, model, length, dims, device, steps, warmup, peak_flops) -> dict:
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(0, dims["vocab_size"], (1, length), generator=g).to(device)
    labels = torch.where(torch.rand(1, length, generator=g) < 0.1, ids.cpu(), torch.full((1, length), -100)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step(variant, model, ids, labels)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(variant, model, ids, labels)
    sync()
    seconds = (time.perf_counter() - t0) / steps
    tokens_per_s = length / seconds
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    mfu = tokens_per_s * flops_per_token(dims, length) / peak_flops if peak_flops else float("nan")
    return {"variant": variant, "tokens": length, "status": "ok", "step_s": round(seconds, 3),
            "tokens_per_s": round(tokens_per_s, 1), "mfu": round(mfu, 4), "peak_gb": round(peak, 2)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, two short lengths")
    ap.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768, 65536, 131072, 262144, 524288])
    ap.add_argument("--variants", nargs="+", default=["hf", "ours"], choices=["hf", "ours"])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per length (1 once a step exceeds 30 s)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new lengths past this (8-min slot)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak per GPU (H100/H200 SXM)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if args.smoke:
        device, dtype, dims, lengths = torch.device("cpu"), torch.float32, TINY, [256, 512]
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            sys.exit("no GPU: run with --smoke on CPU")
        device, dtype, dims, lengths = torch.device("cuda"), torch.bfloat16, LLAMA_31_8B, args.lengths
    peak_flops = args.peak_tflops * 1e12 if device.type == "cuda" else 0.0
    rows = []
    for variant in args.variants:
        model = build(variant, dims, max(lengths), device, dtype)
        last = None
        for length in lengths:
            elapsed = time.perf_counter() - start
            steps = args.steps if (last is None or last["step_s"] < 30) else 1
            if last is not None:  # attention grows ~quadratically: predict before starting
                predicted = last["step_s"] * (length / last["tokens"]) ** 2 * (steps + args.warmup)
                if elapsed + predicted > args.budget_s:
                    rows.append({"variant": variant, "tokens": length, "status": f"skipped: ~{predicted:.0f} s "
                                 f"would pass the {args.budget_s:.0f} s budget"})
                    print(rows[-1], flush=True)
                    break
            try:
                row = measure(variant, model, length, dims, device, steps, args.warmup, peak_flops)
            except torch.OutOfMemoryError:
                row = {"variant": variant, "tokens": length, "status": "OOM"}
            rows.append(row)
            print(row, flush=True)
            if row["status"] != "ok":
                break
            last = row
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = Path(args.out or ROOT / "bench/results" / ("gpu_train_throughput_smoke" if args.smoke else "gpu_train_throughput"))
    _write(rows, out, device, " ".join(["gpu_train_throughput.py", *(argv if argv is not None else sys.argv[1:])]))
    print(f"total {time.perf_counter() - start:.0f} s")


def _write(rows, out: Path, device: torch.device, command: str) -> None:
    import transformers
    from longctx.ulysses import HAS_FLASH_ATTN

    keys = ["variant", "tokens", "status", "step_s", "tokens_per_s", "mfu", "peak_gb"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in keys} for r in rows)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    head = (f"# Training throughput, Llama-3.1-8B architecture, one GPU: ours vs plain HF\n\n"
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}\n- device: {gpu}; {platform.platform()}\n"
            f"- versions: torch {torch.__version__}, transformers {transformers.__version__}, "
            f"flash-attn {'yes' if HAS_FLASH_ATTN else 'no'}\n- command: `python bench/{command}`\n"
            f"- forward + backward, bf16 weights and gradients, no optimizer step; 10% answer tokens; "
            f"MFU convention in the script's docstring\n\n")
    table = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    table += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    out.with_suffix(".md").write_text(head + "\n".join(table) + "\n", encoding="utf-8")
    print(f"wrote {out.with_suffix('.md')} and .csv")


if __name__ == "__main__":
    main()
