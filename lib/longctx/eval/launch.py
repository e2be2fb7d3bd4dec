"""Stage 4 on SLURM: one evaluation job (an array of shards) per checkpoint, rendered, never submitted.

    python -m longctx.eval.launch --params params/paper/04_evaluate.yaml \\
        --checkpoint runs/paper/03_train/1M/hf=ours-1m --shards 8 [--after 12345] [--dry-run]
    python -m longctx.eval.launch --params params/paper/04_evaluate.yaml \\
        --after-train params/paper/03_train.yaml --shards 8       # train chain, then each stage's export

prints shell lines, run from the project root, that queue per checkpoint:

1. the array ``slurm/evaluate.sbatch`` (``--array=0-(n-1)``): task ``i`` serves the checkpoint with
   vLLM on its own node (``TP`` GPUs, ``MAX_MODEL_LEN`` tokens) and evaluates shard ``i/n`` of the
   task x length list (:mod:`longctx.eval.shards`), ``--dependency=afterok`` on the training job
   that writes the checkpoint when there is one;
2. one CPU job ``python -m longctx.evaluate --merge RUN_ID`` after the array: one results table
   per checkpoint (``{output_dir}/RUN_ID/results.csv``), its rows appended to the folder's table.

With ``--after-train`` the lines of ``longctx.train.launch.sbatch_commands`` come first and each
stage exported by training (``export_hf``) is evaluated after its own training job.

Tensor parallelism (:func:`choose_tp`): the smallest TP whose share of the weights plus the KV cache
of one sequence of the longest length fits a GPU (``--gpu-memory-gib`` at vLLM's default
``gpu_memory_utilization`` 0.9, less a reserve for activations), from the checkpoint's
``config.json`` (layers, KV heads, head dim, dtype); before training has written it, from
``--model-config`` or Llama-3.1-8B's shape.

``--dry-run`` projects each server's requests, tokens and wall time (:func:`project`): prefill is
compute-bound, ``L * (2 * params + 4 * layers * heads * head_dim * L / 2)`` FLOPs for an ``L``-token
prompt (the causal attention term grows with ``L``) at ``--prefill-tflops`` per GPU; decoding is
memory-bound, each new token reading the weights and the prompt's KV cache at ``--decode-gbps`` per
GPU. One request at a time: an upper bound where vLLM batches short prompts, close to the truth at
the long lengths that dominate.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.config import ParamsError, load_params, project_root, resolve_path
from .params import EvalConfig
from .ruler_spec import RULER_TASKS
from .shards import WorkItem, assign, group_cost, work_list

__all__ = ["ModelShape", "model_shape", "choose_tp", "project", "sbatch_commands", "main", "LLAMA31_8B"]

_PY = '"${LONGCTX_PYTHON:-.venv/bin/python}"'
_LOGS = '"${LONGCTX_RUNS:-runs}/slurm"'  # the jobs' logs: under the run root (LONGCTX_RUNS, e.g. scratch)
GIB = 1 << 30
VLLM_MEMORY_UTILIZATION = 0.9   # vLLM's default --gpu-memory-utilization
ACTIVATION_RESERVE_GIB = 4.0    # activations, CUDA graphs, NCCL buffers per GPU (vLLM profiles ~2-5 GiB)
OTHER_NEW_TOKENS = 128          # completion budget assumed for non-RULER tasks in the projection


@dataclass(frozen=True)
class ModelShape:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    params: float         # parameters (weights), for memory and FLOPs
    bytes_per: int        # 2 for bf16 / fp16
    window: int           # max_position_embeddings
    source: str           # where the shape came from

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per  # K and V

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per


# meta-llama/Llama-3.1-8B-Instruct's config.json (8.03e9 parameters), the paper's base model
LLAMA31_8B = ModelShape(layers=32, heads=32, kv_heads=8, head_dim=128, params=8.03e9, bytes_per=2,
                        window=131072, source="Llama-3.1-8B's shape (no config.json yet)")


def model_shape(config_path: str | Path) -> ModelShape:
    """The shape of a Llama-style model from its ``config.json`` (a file or the folder holding it)."""
    path = Path(config_path)
    path = path / "config.json" if path.is_dir() else path
    try:
        c = json.loads(path.read_text(encoding="utf-8"))
        heads, hidden, layers = int(c["num_attention_heads"]), int(c["hidden_size"]), int(c["num_hidden_layers"])
        kv_heads = int(c.get("num_key_value_heads") or heads)
        head_dim = int(c.get("head_dim") or hidden // heads)
        inter, vocab = int(c["intermediate_size"]), int(c["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: cannot read the model's shape ({err})") from None
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    embed = vocab * hidden * (1 if c.get("tie_word_embeddings") else 2)
    params = layers * (attn + 3 * hidden * inter) + embed
    dtype = str(c.get("dtype") or c.get("torch_dtype") or "bfloat16")
    return ModelShape(layers, heads, kv_heads, head_dim, float(params), 4 if dtype == "float32" else 2,
                      int(c.get("max_position_embeddings") or 0), str(path))


def choose_tp(shape: ModelShape, max_len: int, gpu_memory_gib: float, gpus_per_node: int = 8) -> tuple[int, float]:
    """(smallest TP that fits, GiB per GPU at that TP). KV heads are split over TP ranks and
    replicated when TP exceeds them, as vLLM does; TP must divide the attention heads."""
    usable = gpu_memory_gib * VLLM_MEMORY_UTILIZATION - ACTIVATION_RESERVE_GIB
    need = 0.0
    for tp in (1, 2, 4, 8, 16):
        if tp > gpus_per_node or shape.heads % tp:
            continue
        kv_share = max(1, shape.kv_heads // tp) / shape.kv_heads
        need = (shape.weight_bytes / tp + shape.kv_bytes_per_token * max_len * kv_share) / GIB
        if need <= usable:
            return tp, need
    raise ValueError(f"{shape.source}: weights ({shape.weight_bytes / GIB:.1f} GiB) and the KV cache of one "
                     f"{max_len}-token sequence ({shape.kv_bytes_per_token * max_len / GIB:.1f} GiB) do not fit "
                     f"{gpus_per_node} GPUs of {gpu_memory_gib:g} GiB ({usable:.1f} usable each; {need:.1f} needed at "
                     f"the largest TP): lower the longest length, or use GPUs with more memory")


def max_model_len(cfg: EvalConfig, shape: ModelShape) -> int:
    """The server's window: the longest configured length, or the model's window when hub sets
    (prompts of their own lengths, cut to the window) are evaluated; never above the model's."""
    items = work_list(cfg)
    longest = max((i.length for i in items), default=0)
    if any(not i.length and i.benchmark != "mmlu" for i in items) or not longest:
        longest = shape.window
    return min(longest, shape.window) if shape.window else longest


def _new_tokens(item: WorkItem, cfg: EvalConfig) -> int:
    n = RULER_TASKS[item.task].tokens_to_generate if item.benchmark == "ruler" else OTHER_NEW_TOKENS
    if item.benchmark == "mmlu":
        n = 1
    return min(n, cfg.max_new_tokens_cap) if cfg.max_new_tokens_cap else n


def project(cfg: EvalConfig, shape: ModelShape, shards: int, tp: int, window: int, prefill_tflops: float = 400.0,
            decode_gbps: float = 2000.0) -> list[dict[str, Any]]:
    """One row per server (shard): groups, requests, prompt / completion tokens, projected hours."""
    items = work_list(cfg)
    shard_of = assign(items, shards, cfg, window)
    flops_per_s = prefill_tflops * 1e12 * tp
    bytes_per_s = decode_gbps * 1e9 * tp
    rows = []
    for s in range(shards):
        mine = [item for item, k in zip(items, shard_of) if k == s]
        requests = prompt = completion = 0
        seconds = 0.0
        for item in mine:
            if item.length > window:
                continue  # the runner skips it: longer than the server's window
            n, tokens = group_cost(item, cfg, window)
            length = tokens // n if n else 0
            new = _new_tokens(item, cfg)
            requests, prompt, completion = requests + n, prompt + tokens, completion + n * new
            prefill = length * (2 * shape.params + 2 * shape.layers * shape.heads * shape.head_dim * length)
            decode = new * (shape.weight_bytes + shape.kv_bytes_per_token * length)
            seconds += n * (prefill / flops_per_s + decode / bytes_per_s)
        rows.append({"shard": f"{s}/{shards}", "groups": len(mine), "requests": requests, "prompt_tokens": prompt,
                     "completion_tokens": completion, "hours": seconds / 3600,
                     "longest": max((i.length for i in mine if i.length <= window), default=0)})
    return rows


def format_projection(rows: list[dict[str, Any]], tp: int, label: str) -> str:
    lines = [f"{label}: {len(rows)} servers of TP={tp} GPUs",
             f"  {'shard':>6} {'groups':>6} {'requests':>9} {'prompt tok':>14} {'compl. tok':>11} {'longest':>9} {'hours':>7}"]
    for r in rows:
        lines.append(f"  {r['shard']:>6} {r['groups']:>6} {r['requests']:>9,} {r['prompt_tokens']:>14,} "
                     f"{r['completion_tokens']:>11,} {r['longest']:>9,} {r['hours']:>7.1f}")
    wall = max((r["hours"] for r in rows), default=0.0)
    gpu_h = sum(r["hours"] for r in rows) * tp
    lines.append(f"  wall time {wall:.1f} h (slowest server), {gpu_h:,.0f} GPU-hours")
    return "\n".join(lines)


def _shown(path: str | Path) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(project_root())) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


@dataclass
class Checkpoint:
    model: str            # the export folder (hf/) or a hub id
    run_id: str
    after: str = ""       # shell expression of the job id it waits for ("$job4", "12345")
    window: int = 0       # the model's window when its config.json is not written yet (a training stage's length)


def sbatch_commands(cfg: EvalConfig, params_path: str | Path, checkpoints: list[Checkpoint], *, shards: int,
                    tps: list[int], windows: list[int], gpus_per_node: int = 8, port: int = 0,
                    time: str = "48:00:00", evaluate_args: str = "", head: list[str] | None = None) -> list[str]:
    """Per checkpoint: the evaluation array (afterok its training job, if any) and the merge job."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    path = shlex.quote(_shown(params_path))
    lines = head or ["set -a; source slurm/cluster.env; set +a   # partition, account, LONGCTX_PYTHON, LONGCTX_RUNS "
                     "(cluster.env.example)",
                     f"mkdir -p {_LOGS}   # SLURM does not create the folder of --output: without it no job logs"]
    for k, (ck, tp, window) in enumerate(zip(checkpoints, tps, windows), start=1):
        if "," in ck.model + ck.run_id + evaluate_args:
            raise ValueError("sbatch --export splits on commas: model, run id and evaluate_args cannot contain one")
        exports = (f"ALL,MODEL={ck.model},TP={tp}" + (f",PORT={port}" if port else "")
                   + f",MAX_MODEL_LEN={window},RUN_ID={ck.run_id}"
                   + (f",EVALUATE_ARGS={evaluate_args}" if evaluate_args else ""))
        dependency = f" --dependency=afterok:{ck.after}" if ck.after else ""
        array = f" --array=0-{shards - 1}" if shards > 1 else ""
        lines.append(f"eval{k}=$(sbatch --parsable{dependency}{array} --job-name=longctx-eval-{ck.run_id} "
                     f"--gpus-per-node={tp} --time={time} --output={_LOGS}/%x-%A_%a.out "
                     f"--export={shlex.quote(exports)} slurm/evaluate.sbatch {path})")
        if shards > 1:
            merge = f"{_PY} -m longctx.evaluate --params {path} --merge {shlex.quote(ck.run_id)}"
            lines.append(f"sbatch --dependency=afterok:$eval{k} --job-name=longctx-eval-merge --cpus-per-task=2 "
                         f"--mem=8G --time=1:00:00 --output={_LOGS}/%x-%j.out --wrap={shlex.quote(merge)}")
    return lines


def _checkpoint_arg(text: str) -> Checkpoint:
    model, _, run_id = text.partition("=")
    return Checkpoint(model, run_id or Path(model.rstrip("/")).parent.name or Path(model).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.eval.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True, help="YAML file of EvalConfig (stage 4)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="PATH[=RUN_ID]",
                        help="an export's hf/ folder or a hub id, optionally its run id (default: the folder "
                             "above hf/, e.g. 1M); repeat for several")
    parser.add_argument("--after", action="append", default=[], metavar="JOBID",
                        help="training job the matching --checkpoint waits for (afterok), in order")
    parser.add_argument("--after-train", default="", metavar="TRAIN_PARAMS",
                        help="render stage 3's chain first and evaluate each exported stage after its job")
    parser.add_argument("--shards", type=int, default=8, help="servers (array tasks) per checkpoint")
    parser.add_argument("--tp", type=int, default=0, help="tensor-parallel degree (default: the smallest that fits)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory per GPU assumed by the TP choice "
                        "(H100: 80, H200: 141)")
    parser.add_argument("--model-config", default="", help="config.json giving the shape when the export does not "
                        "exist yet (default: Llama-3.1-8B's)")
    parser.add_argument("--port", type=int, default=0, help="port of each task's server on 127.0.0.1 (default: a "
                        "free one, picked when the task starts, so tasks sharing a node never collide)")
    parser.add_argument("--time", default="48:00:00", help="time limit of one array task")
    parser.add_argument("--evaluate-args", default="", help="more longctx.evaluate flags for every task")
    parser.add_argument("--dry-run", action="store_true", help="print the projection per server, not the commands")
    parser.add_argument("--prefill-tflops", type=float, default=400.0,
                        help="effective prefill TFLOP/s per GPU (H100 bf16 dense peak: 989)")
    parser.add_argument("--decode-gbps", type=float, default=2000.0,
                        help="effective HBM GB/s per GPU while decoding (H100 SXM peak: 3350)")
    args = parser.parse_args(argv)
    try:
        cfg = load_params(EvalConfig, args.params)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        checkpoints = [_checkpoint_arg(c) for c in args.checkpoint]
        for ck in checkpoints:  # runs/...: under the run root (LONGCTX_RUNS), where training wrote it
            if Path(ck.model).parts[:1] == ("runs",):
                ck.model = _shown(resolve_path(ck.model))
        if len(args.after) > len(checkpoints):
            raise ValueError(f"{len(args.after)} --after job ids for {len(checkpoints)} --checkpoint")
        for ck, job in zip(checkpoints, args.after):
            ck.after = job
        head = None
        if args.after_train:
            from ..train.config import TrainConfig
            from ..train.launch import sbatch_commands as train_commands

            train_path = resolve_path(args.after_train)
            train = load_params(TrainConfig, train_path)
            if not train.export_hf:
                raise ValueError(f"{args.after_train}: export_hf is false, training writes no servable checkpoint")
            head = train_commands(train, train_path)
            out = _shown(resolve_path(train.output_dir))
            checkpoints += [Checkpoint(f"{out}/{stage.name}/hf", stage.name, f"$job{i}", stage.seq_len)
                            for i, stage in enumerate(train.stages, start=1)]
        if not checkpoints:
            raise ValueError("name a --checkpoint or --after-train")
        tps, windows, reports = [], [], []
        for ck in checkpoints:
            folder = resolve_path(ck.model)
            if (folder / "config.json").is_file():
                shape = model_shape(folder)
            elif args.model_config:
                shape = model_shape(resolve_path(args.model_config))
            else:
                shape = LLAMA31_8B
            if not (folder / "config.json").is_file() and not ck.after and not args.after_train:
                print(f"note: {ck.model} has no config.json here (a hub id, or not exported yet): shape from "
                      f"{shape.source}", file=sys.stderr)
            if ck.window:  # not trained yet: the stage's length is its window
                shape = replace(shape, window=ck.window, source=f"{shape.source}, window of training stage {ck.run_id}")
            elif not (folder / "config.json").is_file():  # unknown window: the lengths asked for
                longest = max((i.length for i in work_list(cfg)), default=0)
                shape = replace(shape, window=longest or shape.window)
            window = max_model_len(cfg, shape)
            tp, per_gpu = (args.tp, 0.0) if args.tp else choose_tp(shape, window, args.gpu_memory_gib,
                                                                   args.gpus_per_node)
            tps.append(tp)
            windows.append(window)
            reports.append(format_projection(
                project(cfg, shape, args.shards, tp, window, args.prefill_tflops, args.decode_gbps),
                tp, f"{ck.run_id} ({ck.model}; window {window:,}; "
                    + (f"{per_gpu:.1f} GiB per GPU of {args.gpu_memory_gib:g}" if per_gpu else "TP given") + ")"))
        if args.dry_run:
            print(f"Projection: prefill {args.prefill_tflops:g} TFLOP/s and decoding {args.decode_gbps:g} GB/s per GPU, "
                  "one request at a time per server")
            print("\n".join(reports))
            return 0
        lines = sbatch_commands(cfg, resolve_path(args.params), checkpoints, shards=args.shards, tps=tps,
                                windows=windows, gpus_per_node=args.gpus_per_node, port=args.port, time=args.time,
                                evaluate_args=args.evaluate_args, head=head)
    except (ValueError, ParamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
