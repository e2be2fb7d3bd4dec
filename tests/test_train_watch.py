"""Watching a long stage: CSV, TensorBoard and W&B agree, MFU and peak memory are right, and the
stage stops in time before its job's end and resumes as if never stopped.

One real gloo run of two processes (sp=2, FSDP over both; rank 1 holds an extra 1 GiB so the
ranks' peaks differ) trains stage ``a`` four ways: straight through; killed after step 3 (last
checkpoint at step 2); resumed with a job end that leaves no room for another step (a fake
clock: it stops after one step with a checkpoint and asks for a requeue); resumed to the end.
The tests then read what the runs wrote with the readers the field uses: TensorBoard's
``EventAccumulator`` and W&B's own transaction log (offline mode). FLOPs are checked against
torch's ``FlopCounterMode``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from longctx import train
from longctx.train import dist
from longctx.train.data import SampleSet, StepPlan, open_stage_samples
from longctx.train.deadline import DEADLINE_ENV, Deadline, job_end
from longctx.train.flops import step_flops
from longctx.train.log import COLUMNS, WANDB_ID_FILE, read_log
from longctx.train.memory import dims_of
from test_train import TINY, one_thread, tiny_config, write_samples  # noqa: F401 (one_thread: fixture)

BALLAST_GIB = 3.0          # extra resident memory on rank 1 only: above a rank's own peak (~1.4 GiB
                           # resident here: torch, transformers, tensorboard), so only a max over ranks sees it
FAR, NEAR = 1e6, 1e-3      # seconds to the fake job end: plenty, and not enough for anything


# --------------------------------------------------------------------------- FLOPs against torch's counter


def test_step_flops_match_torch_flop_counter():
    """One forward + backward of the tiny Llama under ``FlopCounterMode`` (eager attention, so the
    attention matmuls are counted; no activation checkpointing): torch's count equals ours with
    the attention counted in full (eager computes the masked triangle too) plus the one extra
    forward projection our chunked loss recomputes in backward (hardware, not model, FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    from longctx.core.config import load_params
    from longctx.train.config import TrainConfig
    from longctx.train.memory import dims_from_config
    from longctx.train.model import build_model
    from test_train import ROOT

    cfg = load_params(TrainConfig, ROOT / "params/demo/03_train.yaml",
                      {"tiny": TINY, "activation_checkpointing": False,
                       "stages": [{"name": "a", "seq_len": 64, "rope": {"type": "default", "theta": 1e4}}]})
    par = dist.init(sp=1)
    model = build_model(cfg, cfg.stages[0], par)
    model.lm.set_attn_implementation("eager")
    rng = np.random.default_rng(0)
    samples = []
    for n in (40, 57):
        ids = rng.integers(1, 256, n)
        samples.append({"input_ids": ids, "labels": np.where(rng.random(n) < 0.3, ids, -100)})
    answers = 0
    with FlopCounterMode(display=False) as counter:
        for m in train.step_batches(samples, par):
            loss, _, n = model(m["input_ids"], m["labels"], m["position_ids"])
            loss.backward()
            answers += n
    dims = dims_from_config(model.config)
    assert dims == dims_of(cfg) and answers > 0
    sum_sq = 40**2 + 57**2
    # exactly the model FLOPs: the answer loss computes each chunk's logits gradient in its forward
    # (written into one buffer), so its backward recomputes no logits
    assert counter.get_total_flops() == step_flops(dims, 97, answers, 2 * sum_sq)


# --------------------------------------------------------------------------- the deadline decision


def test_job_end_sources_and_decision(monkeypatch):
    from longctx.train import deadline

    assert job_end({}) == (None, "no $LONGCTX_DEADLINE or $SLURM_JOB_END_TIME")
    assert job_end({"SLURM_JOB_END_TIME": "1700000000"}) == (1.7e9, "$SLURM_JOB_END_TIME")
    assert job_end({DEADLINE_ENV: "1800000000", "SLURM_JOB_END_TIME": "1700000000"}) == (1.8e9, f"${DEADLINE_ENV}")
    with pytest.raises(ValueError, match="LONGCTX_DEADLINE='tomorrow': expected the job's end as Unix seconds"):
        job_end({DEADLINE_ENV: "tomorrow"})
    monkeypatch.setattr(deadline, "now", lambda: 1000.0)
    clock = Deadline(1000.0 + 100, safety=1.5, source="test")
    clock.record_step(30.0)                       # no save measured yet: counted as one more step
    assert clock.check() == ""                    # 100 s left >= 1.5 x (30 + 30) = 90
    clock.record_step(40.0)
    assert clock.check().startswith("100 s left before the job's end (test), less than 1.5 x (longest step 40.0 s")
    clock = Deadline(1000.0 + 100, safety=1.5, source="test")
    clock.record_step(30.0)
    clock.record_save(40.0)                       # a measured save counts as measured
    assert "checkpoint save 40.0 s) = 105 s" in clock.check()
    assert Deadline(None, 1.5, source="x").check() == ""


# --------------------------------------------------------------------------- the gloo run


def _stage_config(samples: str, output_dir: str, **overrides):
    return tiny_config(Path(output_dir), Path(samples), sp=2, output_dir=output_dir, wandb_project="longctx-test",
                       tensorboard=True, stages=[{"name": "a", "samples": samples, "seq_len": 64, "sp": 2,
                                                   "global_batch": 2, "rope": {"type": "default", "theta": 1e4}}],
                       **overrides)


def _watch_worker(root: str, samples: str) -> dict:
    from longctx.train import deadline
    from longctx.train.log import peak_memory_gb

    par = dist.init(sp=2)
    ballast = np.ones(int(BALLAST_GIB * 2**30), dtype=np.uint8) if par.rank == 1 else None   # touched pages
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONSOLE="off",
                      WANDB_DIR=root, WANDB_CONFIG_DIR=f"{root}/wandb-config", WANDB_CACHE_DIR=f"{root}/wandb-cache")
    train.train(_stage_config(samples, f"{root}/straight"), only_stage="a")
    stopped = _stage_config(samples, f"{root}/stopped")
    try:                                                      # killed after step 3: checkpoint of step 2
        train.train(dataclasses.replace(stopped, stop_after_steps=3), only_stage="a")
    except train.Preempted:
        pass
    os.environ[DEADLINE_ENV] = "1000000000"
    os.environ[train.STOP_FILE_ENV] = f"{root}/stop-file"
    calls = []

    def fake_now() -> float:                                  # far at start, then the end is near
        calls.append(1)
        return 1e9 - (FAR if len(calls) == 1 else NEAR)

    deadline.now = fake_now
    message = ""
    try:
        train.train(stopped, only_stage="a")
    except train.Stopped as err:
        message = str(err)
    after_stop = {"checkpoints": sorted(p.name for p in Path(f"{root}/stopped/a/checkpoints").glob("step_*")),
                  "log_steps": [r["step"] for r in read_log(Path(f"{root}/stopped/a/train_log.csv"))],
                  "stop_file": os.path.exists(f"{root}/stop-file"), "message": message}
    del os.environ[DEADLINE_ENV], os.environ[train.STOP_FILE_ENV]
    train.train(stopped, only_stage="a")                      # the requeued job: to the end
    del ballast
    return {"rank": par.rank, "peak_gb": peak_memory_gb(par.device), **after_stop}


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    root = tmp_path_factory.mktemp("watch")
    samples = write_samples(root / "samples")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ranks = dist.spawn(_watch_worker, 2, str(root), str(samples), timeout_s=900)
    finally:
        torch.set_num_threads(saved)
    return root, samples, ranks


def test_deadline_stop_checkpoints_requeues_and_resumes_to_the_straight_curve(watched):
    root, _, ranks = watched
    info = ranks[0]
    assert info["checkpoints"] == ["step_000002", "step_000003"]      # step 3: the deadline's checkpoint
    assert info["log_steps"] == [1, 2, 3] and info["stop_file"]          # the job script will requeue
    assert "s left before the job's end ($LONGCTX_DEADLINE), less than 1.5 x (longest step" in info["message"]
    assert "checkpoint saved at step 3; stopping for a requeue" in info["message"]
    straight = read_log(root / "straight/a/train_log.csv")
    resumed = read_log(root / "stopped/a/train_log.csv")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in straight], atol=1e-6, rtol=0)
    assert (root / "stopped/a/final/trainer_state.json").is_file()


def test_tensorboard_events_equal_the_csv(watched):
    """Every column of every CSV row is in the event files at the row's step, once: the events a
    killed run wrote after its checkpoint (step 3 of the first try) are purged on resume."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, _ = watched
    for run in ("straight", "stopped"):
        rows = read_log(root / run / "a/train_log.csv")
        events = EventAccumulator(str(root / run / "a/tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        numeric = [c for c in COLUMNS if c not in ("stage", "step")]
        assert sorted(events.Tags()["scalars"]) == sorted(f"a/{c}" for c in numeric)
        for column in numeric:
            seen = events.Scalars(f"a/{column}")
            assert [e.step for e in seen] == [r["step"] for r in rows], (run, column)
            np.testing.assert_allclose([e.value for e in seen], [r[column] for r in rows], rtol=1e-6, atol=0,
                                       err_msg=f"{run} {column}")   # TensorBoard stores float32


def test_peak_memory_is_the_maximum_over_ranks(watched):
    root, _, ranks = watched
    rank0, rank1 = ranks[0]["peak_gb"], ranks[1]["peak_gb"]
    assert rank1 > BALLAST_GIB > rank0, (rank0, rank1)
    for run in ("straight", "stopped"):
        peaks = [r["peak_mem_gb"] for r in read_log(root / run / "a/train_log.csv")]
        assert all(BALLAST_GIB < p <= rank1 for p in peaks), (run, peaks, rank0, rank1)


def test_mfu_and_eta_follow_the_measured_steps(watched):
    """MFU from the step's real tokens and sample lengths (the stage's seeded plan), two ranks and
    the nominal peak; the ETA counts down to 0 at the last step."""
    root, samples, _ = watched
    cfg = _stage_config(str(samples), str(root / "straight"))
    stage = cfg.stages[0]
    data = open_stage_samples(stage)
    plan = StepPlan.build(len(data), stage, 1, 2, cfg.seed, 0)            # world 2 = sp 2: dp 1, grad_accum 2
    rows = read_log(root / "straight/a/train_log.csv")
    dims = dims_of(cfg)
    for step, row in enumerate(rows):
        lengths = [len(data[i]["input_ids"]) for i in plan.indices(step, 0)]
        assert row["tokens"] == sum(lengths)
        flops = step_flops(dims, sum(lengths), row["answer_tokens"], sum(n * n for n in lengths))
        assert row["mfu"] == pytest.approx(flops / (row["step_s"] * 2 * cfg.peak_flops_per_gpu), rel=1e-9)
        assert 0 < row["mfu"] < 1e-3          # a CPU against the H100's nominal peak
        assert row["eta_s"] >= 0 and math.isfinite(row["eta_s"])
    assert rows[-1]["eta_s"] == 0 and rows[0]["eta_s"] > 0
    assert isinstance(data, SampleSet)


def _wandb_records(path: Path):
    """Records of a W&B transaction log (``run-<id>.wandb``), read by hand: wandb 0.31 ships no
    Python reader (its Go core writes it). The format is LevelDB's log: a 7-byte header, then
    32 KiB blocks of chunks (crc32, length, type: full / first / middle / last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B", f"{path}: not a W&B transaction log"
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:                       # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        parts = data if kind in (1, 2) else parts + data
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


def test_wandb_run_survives_the_requeue(watched):
    """The stopped stage's three jobs (killed, stopped by the deadline, finished) log to one W&B
    run, the id stored in the stage's folder, and each continues the steps: 1-3, then 3 again
    (after the checkpoint of step 2), then 4."""
    root, _, _ = watched
    run_id = (root / "stopped/a" / WANDB_ID_FILE).read_text().strip()
    assert run_id and run_id != (root / "straight/a" / WANDB_ID_FILE).read_text().strip()
    segments = sorted((root / "stopped/a/wandb").glob("offline-run-*"))
    assert len(segments) == 3 and all(s.name.endswith(f"-{run_id}") for s in segments), segments
    steps, losses = [], {}
    for segment in segments:
        records = list(_wandb_records(segment / f"run-{run_id}.wandb"))
        assert [r.run.run_id for r in records if r.WhichOneof("record_type") == "run"] == [run_id]
        history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
        steps.append([h.step.num for h in history])
        for h in history:
            values = {"/".join(i.nested_key) or i.key: i.value_json for i in h.item}
            losses[h.step.num] = float(values["a/loss"])
    assert steps == [[1, 2, 3], [3], [4]]
    csv = {r["step"]: r["loss"] for r in read_log(root / "stopped/a/train_log.csv")}
    assert losses == pytest.approx(csv, rel=1e-12)
