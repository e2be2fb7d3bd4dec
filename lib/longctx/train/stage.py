"""Stage 3: long-context fine-tuning with stepwise RoPE scaling, Ulysses SP, answer-only loss, FSDP2.

Stages run in order (``params: stages``); each starts from the previous stage's final weights
with its own RoPE settings, stage-2 samples, length and ``(dp, sp)`` layout. One sample per
data-parallel rank per micro-batch, ``global_batch`` samples per optimizer step, AdamW with
warm-up then constant/cosine/linear decay, a resumable checkpoint every ``checkpoint_every``
steps (a killed stage resumes with the same data order and loss curve), a CSV log per stage.
When ``$LONGCTX_STOP_FILE`` appears (SLURM's time-limit warning, ``slurm/train.sbatch``), or
when the time left before the job's end no longer fits another step and a save as measured
(``longctx.train.deadline``), the stage saves a checkpoint after the current step and exits 0;
the job script then requeues the job.

Launch::

    # demo profile: two CPU processes (gloo), every stage in order
    torchrun --standalone --nproc-per-node 2 -m longctx.train --params params/demo/03_train.yaml

    # one paper stage on a SLURM allocation (slurm/train.sbatch does this on every node)
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD:29500 \\
        --rdzv-id $SLURM_JOB_ID -m longctx.train --params params/paper/03_train.yaml --stage 1M

    # check the paper profile without GPUs: degrees, divisibility, memory per GPU
    python -m longctx.train --params params/paper/03_train.yaml --dry-run

Gradient scaling: every rank's loss is its tokens' summed cross-entropy divided by the step's
answer-token count over all ranks, multiplied by the number of ranks, because FSDP averages
gradients over ranks; the result is the exact per-answer-token mean of the whole step.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.config import ParamsError, load_params, parse_overrides, resolve_path
from . import checkpoint, deadline, dist, ulysses
from .config import Stage, TrainConfig, layout
from .data import SampleSet, StepPlan, open_stage_samples, to_batch
from .flops import mfu, step_flops
from .log import MetricsLog, peak_memory_gb, read_log
from .loss import global_answer_tokens
from .model import build_model

__all__ = ["Preempted", "Stopped", "STOP_FILE_ENV", "stop_requested", "lr_factor", "stage_dir", "train",
           "train_stage", "step_batches", "accumulate_gradients", "main"]


class Preempted(RuntimeError):
    """Raised by ``stop_after_steps`` to imitate a job killed mid-stage (tests)."""


class Stopped(RuntimeError):
    """The job asked to stop (``$LONGCTX_STOP_FILE`` exists): a checkpoint was saved at a step boundary."""


# slurm/train.sbatch creates this file on SLURM's time-limit warning; the trainer then saves a
# checkpoint after the current step and exits 0, and the job requeues itself.
STOP_FILE_ENV = "LONGCTX_STOP_FILE"


def _stop_file_seen(par: dist.Parallel) -> bool:
    """Rank 0 sees ``$LONGCTX_STOP_FILE`` (it alone decides: each node's file-system cache may differ)."""
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and par.is_main and os.path.exists(path)


def stop_requested(par: dist.Parallel) -> bool:
    """True on every rank once rank 0 sees ``$LONGCTX_STOP_FILE`` (one decision for all ranks)."""
    if not os.environ.get(STOP_FILE_ENV):
        return False
    flag = torch.tensor([1 if _stop_file_seen(par) else 0], dtype=torch.int64, device=par.device)
    return bool(dist.all_reduce(flag, "max").item())


def _request_requeue(par: dist.Parallel) -> None:
    """Stopped by the deadline: create the stop file, which tells slurm/train.sbatch to requeue the job."""
    path = os.environ.get(STOP_FILE_ENV)
    if path and par.is_main:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()


def _eta_s(step: int, steps: int, checkpoint_every: int, step_times: list[float], clock: deadline.Deadline) -> float:
    """Time to the end of the stage: mean step time of this run x steps left, plus the saves left
    (resumable ones at multiples of checkpoint_every, and the final one) x the save time."""
    left = steps - step
    saves = (steps - 1) // checkpoint_every - step // checkpoint_every + 1 if left else 0
    recent = step_times[1:] or step_times   # the first step of a run carries start-up costs
    save_s = sum(clock.saves) / len(clock.saves) if clock.saves else clock.max_save_s
    return left * sum(recent) / len(recent) + max(saves, 0) * save_s


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def dims_of_model(model):
    """Architecture of the model being trained (for its FLOPs)."""
    from .memory import dims_from_config

    return dims_from_config(model.config)


def lr_factor(step: int, steps: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or steps <= warmup + 1:
        return 1.0
    progress = (step - warmup) / (steps - warmup - 1)
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def stage_dir(cfg: TrainConfig, stage: Stage) -> Path:
    return resolve_path(cfg.output_dir) / stage.name


def train(cfg: TrainConfig, only_stage: str | None = None,
          samples: dict[str, Sequence[dict]] | None = None) -> list[dict[str, Any]]:
    """Train every stage (or ``only_stage``) in order; returns one summary per stage run.

    ``samples`` maps stage names to in-memory sample sequences (tests), instead of stage-2 files.
    """
    summaries = []
    for index, stage in enumerate(cfg.stages):
        if only_stage is not None and stage.name != only_stage:
            continue
        summaries.append(train_stage(cfg, index, stage, (samples or {}).get(stage.name)))
    if only_stage is not None and not summaries:
        raise KeyError(f"no stage {only_stage!r}; stages: {[s.name for s in cfg.stages]}")
    return summaries


def train_stage(cfg: TrainConfig, index: int, stage: Stage, items: Sequence[dict] | None = None) -> dict[str, Any]:
    par = dist.init(sp=stage.sp, one_rank_group=cfg.offload_params)
    lay = layout(stage, par.world_size)
    folder = stage_dir(cfg, stage)
    final = folder / "final"
    log_path = folder / "train_log.csv"
    if cfg.resume and checkpoint.is_complete(final):
        dist.print0(f"[{stage.name}] already trained ({final}); skipping")
        return _summary(stage, log_path, skipped=True)
    init_from = None
    if index > 0:
        previous = stage_dir(cfg, cfg.stages[index - 1]) / "final"
        if not checkpoint.is_complete(previous):
            raise FileNotFoundError(f"stage {stage.name} starts from stage {cfg.stages[index - 1].name}'s final "
                                    f"checkpoint, which is missing at {previous}; train that stage first")
        init_from = previous
    data = SampleSet(items, name=f"{stage.name} samples", max_tokens=stage.seq_len) if items is not None \
        else open_stage_samples(stage)
    plan = StepPlan.build(len(data), stage, lay.dp, lay.grad_accum, cfg.seed, index)
    model = build_model(cfg, stage, par, init_from)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay, foreach=True)
    start = 0
    resume_from = checkpoint.latest(folder) if cfg.resume else None
    if resume_from is not None:
        state = checkpoint.load(resume_from, model, optimizer)
        start = int(state["step"])
        dist.print0(f"[{stage.name}] resumed from {resume_from} at step {start}")
    log = MetricsLog(log_path, resume_step=start, tensorboard_dir=folder / "tensorboard" if cfg.tensorboard else None,
                     wandb_project=cfg.wandb_project, run_name=f"{Path(cfg.output_dir).name}-{stage.name}")
    dist.print0(f"[{stage.name}] {len(data)} samples, {plan.steps} steps; world {par.world_size} = dp {lay.dp} x "
                f"sp {lay.sp}, grad_accum {lay.grad_accum}, rope {model.config.rope_parameters}")
    end, source = deadline.job_end()
    clock = deadline.Deadline(end, cfg.deadline_safety, folder / "timing.json" if par.is_main else None, source)
    dist.print0(f"[{stage.name}] {clock.describe()}")
    dims = dims_of_model(model)
    autocast = getattr(model, "autocast_dtype", None)
    step_times: list[float] = []
    for step in range(start, plan.steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, plan.steps, stage.warmup_steps, cfg.schedule, cfg.min_lr_ratio)
        t0 = time.perf_counter()
        row = _train_step(model, optimizer, params, data, plan.indices(step, par.dp_rank), par, cfg.grad_clip, autocast)
        step_s = time.perf_counter() - t0
        clock.record_step(step_s)
        done = step + 1 == plan.steps
        # one MAX all-reduce per step: the peak memory of the fullest rank, and rank 0's stop decisions
        out_of_time = "" if done or not par.is_main else clock.check()
        signals = dist.all_reduce(torch.tensor([peak_memory_gb(par.device), float(_stop_file_seen(par)),
                                                float(bool(out_of_time))], dtype=torch.float64, device=par.device),
                                  "max").tolist()
        step_times.append(step_s)
        flops = step_flops(dims, row["tokens"], row["answer_tokens"], row.pop("sum_sq_lengths"))
        row.update(stage=stage.name, step=step + 1, lr=optimizer.param_groups[0]["lr"], step_s=step_s,
                   peak_mem_gb=signals[0], tokens_per_s=row["tokens"] / step_s,
                   mfu=mfu(flops, step_s, par.world_size, cfg.peak_flops_per_gpu),
                   eta_s=_eta_s(step + 1, plan.steps, cfg.checkpoint_every, step_times, clock))
        log.write(row)
        if (step + 1) % cfg.log_every == 0 or done:
            dist.print0(f"[{stage.name}] step {step + 1}/{plan.steps} loss {row['loss']:.4f} lr {row['lr']:.2e} "
                        f"{row['tokens_per_s']:.0f} tok/s mfu {row['mfu']:.3g} peak {row['peak_mem_gb']:.2f} GB "
                        f"eta {_hms(row['eta_s'])}")
        stop = not done and (signals[1] > 0 or signals[2] > 0)
        if ((step + 1) % cfg.checkpoint_every == 0 or stop) and not done:
            t_save = time.perf_counter()
            checkpoint.save(checkpoint.step_dir(folder, step + 1), model, optimizer,
                            {"stage": stage.name, "step": step + 1, "steps": plan.steps})
            checkpoint.prune(folder, cfg.keep_checkpoints)
            if par.is_main:
                clock.record_save(time.perf_counter() - t_save)
        if stop:
            log.close()
            if signals[2] > 0:
                _request_requeue(par)
                raise Stopped(f"[{stage.name}] {out_of_time or 'out of time'}: checkpoint saved at step {step + 1}; "
                              "stopping for a requeue (run again to continue)")
            raise Stopped(f"[{stage.name}] stop requested (${STOP_FILE_ENV}): checkpoint saved at step {step + 1}; "
                          "run again to continue")
        if cfg.stop_after_steps and step + 1 - start >= cfg.stop_after_steps and not done:
            log.close()
            raise Preempted(f"[{stage.name}] stop_after_steps={cfg.stop_after_steps}: stopping at step {step + 1}")
    log.close()
    checkpoint.save(final, model, None, {"stage": stage.name, "step": plan.steps, "steps": plan.steps, "done": True})
    checkpoint.prune(folder, 0)   # the final checkpoint supersedes the resumable ones (8B: ~100 GB each)
    if cfg.export_hf:
        checkpoint.export_hf(model, folder / "hf")
    return _summary(stage, log_path)


def step_batches(samples: list[dict], par: dist.Parallel) -> list[dict[str, torch.Tensor]]:
    """This rank's micro-batches of one step: labels shifted on the full sequence, then sharded."""
    return [ulysses.shard_inputs(to_batch(sample, par.device)) for sample in samples]


def accumulate_gradients(model, micro: list[dict[str, torch.Tensor]], par: dist.Parallel, autocast_dtype=None,
                         after_micro_batch=None) -> tuple[int, torch.Tensor]:
    """Forward and backward every micro-batch of one optimizer step; gradients add up in ``.grad``.

    Returns the step's answer-token count over all ranks and this rank's summed loss (float64).
    Under FSDP every backward reduce-scatters its gradients (torchtitan's choice): ``.grad``
    stays a sharded fp32 DTensor of ``numel / world_size`` elements between micro-batches.
    Skipping the sync on all but the last micro-batch (``set_requires_gradient_sync(False)``)
    would keep every parameter's *unsharded* fp32 gradient resident until the last one, ~30 GiB
    per GPU for an 8B model, for a saving of one reduce-scatter per micro-batch (~1 % of a 1M
    step). ``after_micro_batch(k)`` is called after micro-batch ``k``'s backward (tests).
    """
    count = global_answer_tokens([m["labels"] for m in micro])
    scale = par.world_size / count if count else 0.0   # FSDP averages over world_size ranks
    loss_sum = torch.zeros((), dtype=torch.float64, device=par.device)
    for k, m in enumerate(micro):
        ctx = torch.autocast(par.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with ctx:
            loss, local_sum, _ = model(m["input_ids"], m["labels"], m["position_ids"], loss_scale=scale)
        loss.backward()
        loss_sum += local_sum.double()
        if after_micro_batch is not None:
            after_micro_batch(k)
    return count, loss_sum


def _train_step(model, optimizer, params, data: SampleSet, indices: list[int], par: dist.Parallel,
                grad_clip: float, autocast_dtype) -> dict[str, Any]:
    samples = [data[i] for i in indices]                     # read once (a 1M-token sample is 8 MB)
    count, loss_sum = accumulate_gradients(model, step_batches(samples, par), par, autocast_dtype)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    if count:
        optimizer.step()   # a step without a single answer token leaves the weights alone
    optimizer.zero_grad(set_to_none=True)
    lengths = [len(s["input_ids"]) for s in samples] if par.sp_rank == 0 else []
    tokens = torch.tensor([sum(lengths), sum(n * n for n in lengths)], dtype=torch.float64, device=par.device)
    totals = dist.all_reduce(torch.cat([loss_sum.reshape(1), tokens]))
    return {"loss": float(totals[0]) / count if count else 0.0, "answer_tokens": count,
            "tokens": int(totals[1]), "sum_sq_lengths": float(totals[2]), "grad_norm": float(norm)}


def _summary(stage: Stage, log_path: Path, skipped: bool = False) -> dict[str, Any]:
    rows = read_log(log_path) if dist.current().is_main else []
    return {"stage": stage.name, "skipped": skipped, "log": str(log_path), "steps": len(rows),
            "losses": [r["loss"] for r in rows]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.train", description="Stage 3: long-context fine-tuning.")
    parser.add_argument("--params", required=True, help="YAML file of TrainConfig (params/*/03_train.yaml)")
    parser.add_argument("--stage", help="train only this stage (the previous one must be finished)")
    parser.add_argument("--dry-run", action="store_true", help="validate layout and memory per GPU; no training")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ParamsError as err:
        parser.error(str(err))
    cfg = load_params(TrainConfig, args.params, overrides or None)
    if args.dry_run:
        from .launch import dry_run, format_table

        rows = dry_run(cfg)
        print(format_table(rows))
        return 0 if all(r["fits"] for r in rows) else 1
    try:
        train(cfg, only_stage=args.stage)
    except Preempted as err:
        dist.print0(str(err))
        sys.stdout.flush()
        os._exit(75)   # like a killed job: no cleanup, no final checkpoint
    except Stopped as err:
        dist.print0(str(err))   # a clean stop: exit 0, the job script requeues itself
    dist.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
