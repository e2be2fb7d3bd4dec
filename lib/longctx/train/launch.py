"""Starting stage-3 runs: on this machine (torchrun subprocess), on SLURM (sbatch lines), or dry.

* :func:`launch_local` writes the validated params next to the run and starts
  ``torchrun --standalone --nproc-per-node N -m longctx.train``, streaming its output (the demo
  notebook trains with two gloo processes this way; a notebook kernel is a poor parent for
  ``torch.multiprocessing``).
* :func:`sbatch_commands` renders the job chain of the paper profile: one ``slurm/train.sbatch``
  job per stage, each depending on the previous one (``afterok``), cluster settings from the
  ignored ``slurm/cluster.env``, and SLURM's time-limit warning (``--signal=B:USR1@N``) sized
  from the stage's estimated step and checkpoint times (:func:`usr1_margin_s`).
* :func:`dry_run` validates a profile without GPUs: world size per stage, sp/dp/grad-accum
  divisibility, Ulysses head layout, padding, samples on disk, the per-GPU memory estimate with
  the tiled MLP and checkpoint offload training will use, the host memory they need, and the
  RoPE phase gap between training and the float32 phases transformers / vLLM serve with, and
  the estimated time of a step (``longctx.train.flops`` at ``planning_mfu``).
"""

from __future__ import annotations

import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ..core.config import project_root, resolve_path, to_dict
from . import rope, ulysses
from .config import Stage, TrainConfig, layout
from .flops import checkpoint_gb, sample_step_flops
from .memory import dims_of, plan_stage

LOGS = '"${LONGCTX_RUNS:-runs}/slurm"'  # the jobs' logs, under the run root (LONGCTX_RUNS moves them, e.g. to scratch)
_LAUNCHER_CHATTER = re.compile(r"^[WI]\d{4} ")  # torchrun's own glog-style warning/info lines

__all__ = ["write_params", "launch_local", "run_command", "sbatch_commands", "dry_run", "format_table",
           "estimated_step_s", "estimated_save_s", "usr1_margin_s"]


def write_params(cfg: TrainConfig, path: Path | None = None) -> Path:
    """``cfg`` as YAML (default ``{output_dir}/params.yaml``): what the launched processes read."""
    path = Path(path) if path else resolve_path(cfg.output_dir) / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path


def launch_local(cfg: TrainConfig, nproc: int | None = None, stage: str | None = None, check: bool = True,
                 echo: bool = True, timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m longctx.train`` under torchrun with ``nproc`` local processes (default ``cfg.gpus_per_node``).

    ``timeout_s``: kill torchrun and every worker after this many seconds (a hung collective
    would otherwise hang the notebook) and raise ``TimeoutError``; None waits forever.
    """
    params = write_params(cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc or cfg.gpus_per_node}",
           "-m", "longctx.train", "--params", str(params)] + (["--stage", stage] if stage else [])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    result = run_command(cmd, env=env, echo=echo, timeout_s=timeout_s)
    if check and result.returncode != 0:
        tail = "".join(result.stdout.splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{shlex.join(cmd)} exited with {result.returncode}:\n{tail}")
    return result


def run_command(cmd: list[str], env: dict[str, str] | None = None, echo: bool = True,
                timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the project root in its own process group, streaming its output.

    The output is read on a thread so the deadline is kept even while the command prints
    nothing (a hung collective); on timeout, or when the caller is interrupted, the whole group
    (torchrun and its workers) gets SIGTERM, then SIGKILL 10 s later.
    """
    proc = subprocess.Popen(cmd, cwd=project_root(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            if echo and not _LAUNCHER_CHATTER.match(line):
                print(line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        reader.join(timeout=5)
        tail = "".join(lines[-20:])
        raise TimeoutError(f"{shlex.join(cmd)} still running after {timeout_s:g} s: killed it and its "
                           f"workers. Last output:\n{tail}") from None
    except BaseException:          # KeyboardInterrupt in a notebook: take the workers down too
        _kill_group(proc)
        raise
    reader.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), None)


KILL_GRACE_S = 10.0   # between SIGTERM (torchrun stops its workers) and SIGKILL of the whole group


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=KILL_GRACE_S)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # workers that outlived torchrun, or ignored SIGTERM
    except ProcessLookupError:
        pass
    proc.wait()


def estimated_step_s(cfg: TrainConfig, stage: Stage) -> float:
    """Seconds of one optimizer step of ``stage`` at ``cfg.planning_mfu`` of its GPUs' nominal peak."""
    gpus = stage.nodes * cfg.gpus_per_node
    return sample_step_flops(dims_of(cfg), stage.seq_len, stage.global_batch) / (
        gpus * cfg.peak_flops_per_gpu * cfg.planning_mfu)


def estimated_save_s(cfg: TrainConfig) -> float:
    """Seconds to write a resumable checkpoint at ``cfg.checkpoint_write_gbps``."""
    return checkpoint_gb(dims_of(cfg)) / cfg.checkpoint_write_gbps


USR1_FLOOR_S = 600      # never warn later than 10 minutes before the end
SLURM_SIGNAL_SLACK_S = 60   # SLURM may send the --signal up to a minute late


def usr1_margin_s(cfg: TrainConfig, stage: Stage) -> int:
    """Seconds before the time limit at which SLURM sends USR1: room for the step in flight and a
    save, estimated, times ``deadline_safety``. The trainer normally stops earlier by itself, from
    the times it measures (``longctx.train.deadline``); this is the backstop."""
    need = cfg.deadline_safety * (estimated_step_s(cfg, stage) + estimated_save_s(cfg))
    return max(USR1_FLOOR_S, math.ceil(need) + SLURM_SIGNAL_SLACK_S)


def sbatch_commands(cfg: TrainConfig, params_path: str | Path) -> list[str]:
    """Shell lines, run from the project root, that queue every stage as a SLURM job chained with
    ``--dependency=afterok``; ``params_path`` is shown relative to the root when inside it."""
    path = Path(params_path)
    try:
        params_path = path.resolve().relative_to(project_root()) if path.is_absolute() else path
    except ValueError:
        pass
    lines = ["set -a; source slurm/cluster.env; set +a   # partition, account, python, NCCL, LONGCTX_RUNS "
             "(cluster.env.example)",
             f"mkdir -p {LOGS}   # SLURM does not create the folder of --output: without it no job logs"]
    previous = None
    for i, stage in enumerate(cfg.stages, start=1):
        dependency = f" --dependency=afterok:$job{previous}" if previous else ""
        lines.append(
            f"job{i}=$(sbatch --parsable --nodes={stage.nodes} --gpus-per-node={cfg.gpus_per_node} "
            f"--time={stage.slurm_time} --signal=B:USR1@{usr1_margin_s(cfg, stage)} "
            f"--job-name=longctx-{stage.name}{dependency} --output={LOGS}/%x-%j.out "
            f"--export=ALL,PARAMS={params_path},STAGE={stage.name} slurm/train.sbatch)")
        previous = i
    return lines


def _fitting_layout(cfg: TrainConfig, stage, dims, bytes_per: int) -> str:
    """The smallest (nodes, sp) at which ``stage`` fits, as a hint; empty if none up to 64 nodes."""
    for nodes in (1, 2, 4, 8, 16, 32, 64):
        world = nodes * cfg.gpus_per_node
        for sp in (1, 2, 4, 8, 16, 32, 64):
            if world % sp or stage.global_batch % (world // sp) or dims.heads % sp:
                continue
            if not (dims.kv_heads % sp == 0 or sp % dims.kv_heads == 0):
                continue
            mem = plan_stage(cfg, replace(stage, sp=sp, nodes=nodes), world, bytes_per, dims)
            if mem.fits:
                return f"nodes={nodes} sp={sp} fits ({mem.gib['total']:.1f} GiB per GPU)"
    return ""


def _offload_offer(cfg: TrainConfig, stage, world: int, bytes_per: int, dims) -> str:
    """The ``offload_params`` path for a stage that does not fit the GPU: its GPU and host GiB, and
    whether it fits."""
    import dataclasses

    mem = plan_stage(dataclasses.replace(cfg, offload_params=True), stage, world, bytes_per, dims)
    verdict = "fits" if mem.fits else "does not fit either" + ("" if mem.fits_host else " (host)")
    return (f"with offload_params: true (weights, gradients and AdamW state in host memory) it needs "
            f"{mem.gib['total']:.1f} GiB per GPU and {mem.gib['host']:.1f} GiB host per GPU "
            f"({mem.offload_layers}/{dims.layers} checkpoints offloaded{mem.stride_note()}): {verdict}")


def _concat_samples(cfg: TrainConfig, stage: Stage) -> tuple[int, str]:
    """(samples stage 2 is set to write for ``stage``, the params file saying so) from the
    profile's ``params/<profile>/02_concatenate*.yaml`` whose ``output_dir`` is the stage's
    samples folder; (0, "") when none is."""
    from ..concat.stage import ConcatConfig  # the samples' planned count, before stage 2 has run
    from ..core.config import load_params

    folder = resolve_path(stage.samples)
    folder = folder.parent if folder.suffix == ".parquet" else folder
    name = (Path(stage.samples).stem if str(stage.samples).endswith(".parquet")
            else stage.samples_stage or stage.name)
    root = project_root()
    for path in sorted((root / "params" / cfg.profile).glob("02_concatenate*.yaml")):
        concat = load_params(ConcatConfig, path)
        if resolve_path(concat.output_dir) != folder:
            continue
        for spec in concat.stages:
            if spec.name == name:
                return spec.n_samples, str(path.relative_to(root))
    return 0, ""


def _planned_steps(cfg: TrainConfig, stage: Stage, parquet: Path) -> tuple[int, str, str]:
    """(optimizer steps of ``stage``, where they come from, a note): ``max_steps``, else epochs x
    samples / global batch, the samples ``counted`` in the Parquet footer when the file exists,
    else ``planned`` from stage 2's params (``n_samples``); (0, "?", why) when neither is found."""
    if stage.max_steps:
        return stage.max_steps, "max_steps", ""
    if parquet.is_file():
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(parquet).metadata.num_rows
        return stage.epochs * -(-rows // stage.global_batch), "counted", ""
    planned, source = _concat_samples(cfg, stage)
    if planned:
        return (stage.epochs * -(-planned // stage.global_batch), "planned",
                f"steps planned from n_samples {planned} in {source}, not counted: {parquet} is not written yet")
    return 0, "?", f"steps unknown: no {parquet}, and no params/{cfg.profile}/02_concatenate*.yaml writes it"


def dry_run(cfg: TrainConfig) -> list[dict[str, Any]]:
    """One row per stage for its SLURM layout (``nodes x gpus_per_node``); raises on a layout that
    cannot run (with the numbers), reports memory that does not fit as ``fits: False`` and names
    a layout that does. ``steps`` (``steps_from`` says whether they are counted from the samples on
    disk or planned from stage 2's params before it has run) and ``hours`` (steps x
    :func:`estimated_step_s`, the step time the USR1 margin uses), and
    ``ckpt_disk_gib``: the resumable checkpoints kept plus the final one (fp32 weights and AdamW's
    two moments, 12 bytes per parameter each). Tiled MLP and checkpoint offload are those training will choose
    (``longctx.train.memory.plan_stage``); memory is in GiB, host memory per GPU."""
    dims = dims_of(cfg)
    bytes_per = 4 if cfg.dtype == "float32" else 2
    rows = []
    for stage in cfg.stages:
        world = stage.nodes * cfg.gpus_per_node
        lay = layout(stage, world)
        kv = ulysses.check_heads(dims.heads, dims.kv_heads, stage.sp)
        memory = plan_stage(cfg, stage, world, bytes_per, dims)
        mem = memory.gib
        notes = []
        if stage.seq_len % stage.sp:
            notes.append(f"sequence length {stage.seq_len} is not divisible by sp={stage.sp} (pad to "
                         f"{ulysses.padded_length(stage.seq_len, stage.sp)}); shard_inputs pads such samples")
        gap = rope.phase_gap(stage.rope, stage.seq_len, dims.head_dim)
        if gap > 0:
            notes.append(f"RoPE phases in {stage.rope.precision} differ from the float32 phases transformers and vLLM "
                         f"serve with by up to {gap:.3g} rad below position {stage.seq_len}")
        if not memory.fits_gpu:
            notes.append(f"estimated {mem['total']:.1f} GiB per GPU exceeds {cfg.gpu_memory_gb:g} GiB")
        if not memory.fits_host:
            what = "offloaded checkpoints, weights, gradients and AdamW state" if cfg.offload_params else \
                "offloaded checkpoints"
            notes.append(f"{what} need {mem['host']:.1f} GiB of host memory per GPU, more than "
                         f"host_memory_gb={cfg.host_memory_gb:g} per node allows")
        if memory.checkpoint_stride > 1:
            notes.append("layer checkpoints" + memory.stride_note()[1:])
        offer = "" if cfg.offload_params or memory.fits_gpu else _offload_offer(cfg, stage, world, bytes_per, dims)
        if offer:
            notes.append(offer)
        if not memory.fits:
            notes.append(_fitting_layout(cfg, stage, dims, bytes_per) or "no layout up to 64 nodes fits")
        samples = resolve_path(stage.samples)
        on_disk = samples.is_file() or (samples / f"{stage.samples_stage or stage.name}.parquet").is_file()
        steps, steps_from, steps_note = _planned_steps(cfg, stage, samples if samples.is_file() else
                                                       samples / f"{stage.samples_stage or stage.name}.parquet")
        if steps_note:
            notes.append(steps_note)
        step_s = estimated_step_s(cfg, stage)
        hours = steps * step_s / 3600 if steps else None
        if world == 1 and memory.gib["phase"] == "optimizer step":
            notes.append(f"one rank with fp32 weights + AdamW needs {mem['total']:.0f} GiB at the optimizer step "
                         "whatever the length (16 N + 4 N bytes): no single GPU holds an 8B model so; use several "
                         "ranks (FSDP) or offload_params: true")
        rows.append({
            "stage": stage.name, "seq_len": stage.seq_len, "nodes": stage.nodes, "gpus": world, "sp": lay.sp,
            "dp": lay.dp, "grad_accum": lay.grad_accum, "global_batch": stage.global_batch,
            "kv_heads": f"{dims.kv_heads} ({kv})", "tokens_per_gpu": int(mem["tokens_per_gpu"]),
            "padding": ulysses.padded_length(stage.seq_len, stage.sp) - stage.seq_len,
            "rope": f"{stage.rope.type} theta={stage.rope.theta:.3g} {stage.rope.precision}",
            "rope_gap_rad": float(f"{gap:.3g}"),
            "mlp_tile": memory.tiled_mlp_tokens or "off", "offloaded": f"{memory.offload_layers}/{dims.layers}",
            "ckpt_stride": memory.checkpoint_stride,
            "states_gib": round(mem["states"], 1), "checkpoints_gib": round(mem["checkpoints"], 1),
            "working_gib": round(mem["layer_working_set"] + mem["loss_chunk"] + mem["weight_copies"]
                                 + mem["root_head_grad"] + mem["embedding_end"] + mem["offload_staging"], 1),
            "gpu_gib": round(mem["total"], 1), "host_gib": round(mem["host"], 1), "gpu_limit_gib": cfg.gpu_memory_gb,
            "steps": steps or "?", "hours": round(hours, 1) if hours else "?", "steps_from": steps_from,
            "ckpt_disk_gib": round(12 * dims.params * (cfg.keep_checkpoints + 1) / 2**30),
            "step_s_est": round(step_s, 1), "usr1_s": usr1_margin_s(cfg, stage),
            "fits": memory.fits, "samples_on_disk": on_disk, "notes": "; ".join(notes),
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of dry-run rows."""
    if not rows:
        return "(no stages)"
    keys = [k for k in rows[0] if k != "notes"]
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    out = ["  ".join(k.ljust(widths[k]) for k in keys)]
    out += ["  ".join(str(r[k]).ljust(widths[k]) for k in keys) for r in rows]
    out += [f"{r['stage']}: {r['notes']}" for r in rows if r.get("notes")]
    return "\n".join(out)
