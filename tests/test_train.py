"""Stage-3 trainer: schedule, data order, layout checks, dry run, and kill/resume on CPU.

The resume test launches ``torchrun`` with two gloo processes (sp=2, FSDP over both): a run
killed mid-stage and resumed in a new launch reproduces the loss curve of an uninterrupted
single-process run (sp=1, no FSDP) within atol 1e-5 (other grids sum in another order: measured
5e-7, while a wrong order or lost optimizer state moves it by 1e-4 or more), and the same gradient
norms within rtol 1e-4 (measured 1.3e-7). The same resume on one grid, straight against stopped
and resumed at atol 1e-6, is test_train_watch's. Losses alone cannot see a
gradient scale error (AdamW is scale-invariant), so the gradients themselves are compared too:
one accumulated step on two gloo ranks (sp=2 and dp=2, two micro-batches each) against one
process, every parameter within atol 1e-6 / rtol 1e-4, with the gradients sharded between
micro-batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import spawned_worlds
import torch
from longctx.train import dist, rope
from longctx import train
from longctx.core.config import load_params
from longctx.train.config import Stage, TrainConfig, layout
from longctx.train.data import SampleSet, StepPlan, open_stage_samples
from longctx.train.launch import dry_run, launch_local, sbatch_commands
from longctx.train.log import read_log

ROOT = Path(__file__).resolve().parents[1]
TINY = {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture
def one_thread():
    """2-core CI machines run other tests at the same time: one OpenMP thread avoids stalls."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def write_samples(folder: Path) -> Path:
    from longctx.concat.samples import SampleWriter

    rng = np.random.default_rng(0)
    for name, n, length in [("a", 8, 60), ("b", 4, 90)]:
        with SampleWriter(folder / f"{name}.parquet") as writer:
            for i in range(n):
                ids = rng.integers(1, 256, length - i)       # uneven lengths: odd ones get padded at sp=2
                writer.write(ids, labels=np.where(rng.random(ids.size) < 0.2, ids, -100))
    return folder


def tiny_config(tmp_path: Path, samples: Path, sp: int, **overrides) -> TrainConfig:
    stages = [{"name": "a", "samples": str(samples), "seq_len": 64, "sp": sp, "global_batch": 2,
               "rope": {"type": "default", "theta": 1e4}},
              {"name": "b", "samples": str(samples), "seq_len": 96, "sp": sp, "global_batch": 2,
               "rope": {"type": "default", "theta": 3e4}}]
    return load_params(TrainConfig, ROOT / "params/demo/03_train.yaml",
                       {"tiny": TINY, "stages": stages, "output_dir": str(tmp_path / f"run_sp{sp}"),
                        "gpus_per_node": sp, "checkpoint_every": 2, **overrides})


# --------------------------------------------------------------------------- pieces


def test_lr_schedule():
    f = [train.lr_factor(s, 10, 2, "cosine", 0.1) for s in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[2] == 1.0 and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[1:], f[2:]))
    assert [train.lr_factor(s, 5, 0, "linear", 0.0) for s in (0, 4)] == [1.0, 0.0]
    assert train.lr_factor(7, 10, 2, "constant", 0.1) == 1.0


def test_step_plan_is_seeded_and_covers_each_epoch():
    stage = Stage(name="s", epochs=2, global_batch=4)
    plan = StepPlan.build(10, stage, dp=2, grad_accum=2, seed=3, stage_index=1)
    assert plan.steps == 5                                  # 20 sample slots / 4 per step
    again = StepPlan.build(10, stage, dp=2, grad_accum=2, seed=3, stage_index=1)
    assert [plan.indices(s, r) for s in range(5) for r in range(2)] == \
        [again.indices(s, r) for s in range(5) for r in range(2)]
    first_epoch = [i for s in range(2) for r in range(2) for i in plan.indices(s, r)]
    assert len(set(first_epoch)) == 8
    assert sorted(plan.order[:10].tolist()) == list(range(10))
    with pytest.raises(ValueError, match="cannot fill one step"):
        StepPlan.build(3, Stage(name="s", global_batch=4), dp=4, grad_accum=1, seed=0, stage_index=0)


def test_layout_errors_give_numbers():
    assert layout(Stage(sp=8, global_batch=4), 32) == layout(Stage(sp=8, global_batch=4), 32)
    assert layout(Stage(sp=8, global_batch=4), 32).grad_accum == 1
    with pytest.raises(ValueError, match=r"sp=3 does not divide world_size=8"):
        layout(Stage(sp=3), 8)
    with pytest.raises(ValueError, match=r"global_batch=2 is not a multiple of dp=4 \(world_size 32 / sp 8\)"):
        layout(Stage(sp=8, global_batch=2), 32)


def test_missing_samples_point_to_stage_2(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebooks/02_concatenate.ipynb"):
        open_stage_samples(Stage(name="4K", samples=str(tmp_path / "nowhere")))


def test_samples_longer_than_the_stage_fail():
    items = [{"input_ids": np.arange(10), "labels": np.arange(10)}]
    with pytest.raises(ValueError, match="more than the stage's seq_len=8"):
        SampleSet(items, max_tokens=8)[0]


# --------------------------------------------------------------------------- profiles and dry run


def test_paper_profile_dry_run_and_sbatch_chain():
    cfg = load_params(TrainConfig, ROOT / "params/paper/03_train.yaml")
    rows = dry_run(cfg)
    assert [r["stage"] for r in rows] == ["180K", "350K", "650K", "1M"]
    assert all(r["fits"] for r in rows) and all(r["padding"] == 0 for r in rows)
    assert all(r["rope_gap_rad"] == 0 for r in rows)      # trained on the phases transformers / vLLM serve with
    assert [r["gpus"] for r in rows] == [8, 16, 32, 32]
    for stage in cfg.stages:  # the documented schedule is the scaling-law bound, rounded
        assert stage.rope.theta == pytest.approx(rope.scaling_law_theta(stage.seq_len), rel=0.01)
    lines = sbatch_commands(cfg, "params/paper/03_train.yaml")
    jobs = [line for line in lines if "sbatch" in line]
    assert len(jobs) == 4 and "--dependency" not in jobs[0]
    assert all(f"--dependency=afterok:$job{i}" in jobs[i] for i in (1, 2, 3))
    assert "--nodes=4" in jobs[3] and "STAGE=1M" in jobs[3]
    # USR1 margin: 1.5 x (est. step 383 s + save 48 s) + 60 s; a 1M step (4 x 2^20 tokens) by hand:
    # 6 T x 6.98e9 decoder weights + 6 x 0.42M answers x 0.525e9 head + 6 x 32 x 4096 x 4 x 2^40 attention
    flops = 6 * 4 * 2**20 * 32 * 218_103_808 + 6 * 0.1 * 4 * 2**20 * 128256 * 4096 + 6 * 32 * 4096 * 4 * 2**40
    assert rows[3]["step_s_est"] == pytest.approx(flops / (32 * 989e12 * 0.3), abs=0.1)
    assert "--signal=B:USR1@707 " in jobs[3] and all("--signal=B:USR1@600 " in j for j in jobs[:3])
    assert train.main(["--params", str(ROOT / "params/paper/03_train.yaml"), "--dry-run"]) == 0


def test_dry_run_plans_steps_from_stage_2_params_before_the_samples_exist(tmp_path, monkeypatch):
    """No samples on disk (a fresh run root): the steps come from n_samples of
    params/paper/02_concatenate.yaml (2,000 / 1,280 / 600 / 200 samples, global batch 4, one epoch)
    and say so; once a stage's Parquet file exists its rows are counted instead."""
    from longctx.train.launch import format_table

    monkeypatch.setenv("LONGCTX_RUNS", str(tmp_path / "scratch"))
    cfg = load_params(TrainConfig, ROOT / "params/paper/03_train.yaml")
    rows = dry_run(cfg)
    assert [r["steps"] for r in rows] == [2000 // 4, 1280 // 4, 600 // 4, 200 // 4]
    assert [r["steps_from"] for r in rows] == ["planned"] * 4 and all(r["hours"] != "?" for r in rows)
    assert "steps planned from n_samples 2000 in params/paper/02_concatenate.yaml, not counted" in rows[0]["notes"]
    assert "planned" in format_table(rows)
    from longctx.concat.samples import SampleWriter

    (tmp_path / "scratch" / "paper" / "02_concatenate").mkdir(parents=True)
    with SampleWriter(tmp_path / "scratch" / "paper" / "02_concatenate" / "180K.parquet") as writer:
        for _ in range(9):
            writer.write(np.arange(1, 9), labels=np.arange(1, 9))
    counted = dry_run(cfg)[0]
    assert (counted["steps"], counted["steps_from"], counted["samples_on_disk"]) == (3, "counted", True)  # 9 / 4 -> 3
    elsewhere = dry_run(load_params(TrainConfig, ROOT / "params/paper/03_train.yaml",
                                    {"stages": [{**cfg.stages[0].__dict__, "samples": "runs/nowhere",
                                                 "rope": cfg.stages[0].rope.__dict__}]}))[0]
    assert elsewhere["steps"] == "?" and "steps unknown" in elsewhere["notes"]


def test_dry_run_flags_memory_and_bad_degrees(capsys):
    paper = ROOT / "params/paper/03_train.yaml"
    cfg = load_params(TrainConfig, paper)
    plain = {"tiled_mlp": "never", "offload_checkpoints": "none"}
    one_node = load_params(TrainConfig, paper, {"stages": [{**_stage_dict(cfg.stages[-1]), "nodes": 1, "sp": 8}],
                                                **plain})
    row = dry_run(one_node)[0]
    assert row["fits"] is False and "nodes=2 sp=16 fits" in row["notes"]   # 1M tokens on 8 GPUs: ~88 GiB each
    tiled = dry_run(load_params(TrainConfig, paper, {"stages": one_node.stages}))[0]
    assert tiled["fits"] and tiled["mlp_tile"] == 8192 and tiled["offloaded"] == "0/32"   # tiled MLP suffices
    small = dry_run(load_params(TrainConfig, paper, {"stages": one_node.stages, "gpu_memory_gb": 60}))[0]
    assert small["fits"] and small["offloaded"] != "0/32" and small["host_gib"] > 0
    assert train.main(["--params", str(paper), "--dry-run", "--set", "tiled_mlp=never", "--set",
                       "offload_checkpoints=none", "--set",
                       "stages=[{name: 1M, seq_len: 1048576, sp: 8, nodes: 1, global_batch: 1}]"]) == 1
    bad_heads = load_params(TrainConfig, paper, {"stages": [{**_stage_dict(cfg.stages[0]), "sp": 64, "nodes": 8}]})
    with pytest.raises(ValueError, match=r"32 query heads / 8 KV heads over sp=64.*valid sp: \[1, 2, 4, 8, 16, 32\]"):
        dry_run(bad_heads)
    demo = load_params(TrainConfig, ROOT / "params/demo/03_train.yaml")
    assert [r["sp"] for r in dry_run(demo)] == [2, 2]
    exact = load_params(TrainConfig, paper, {"stages": [{**_stage_dict(cfg.stages[-1]),
                                                         "rope": {"type": "default", "theta": 3.58e9, "precision": "float64"}}]})
    row = dry_run(exact)[0]
    assert 0.01 < row["rope_gap_rad"] < 0.1 and "float64 differ from the float32 phases" in row["notes"]
    assert row["rope_gap_rad"] == pytest.approx(rope.phase_gap(exact.stages[0].rope, 1_048_576), rel=1e-2)


def test_slurm_script_is_generic():
    import subprocess

    script = ROOT / "slurm/train.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "torch.distributed.run" in text and "--rdzv-backend=c10d" in text and "slurm/cluster.env" in text
    assert not any(p in text for p in ("/home/", "/scratch/", "/gpfs/", "/lustre/"))   # no cluster paths
    assert (ROOT / "slurm/cluster.env.example").is_file()


def test_slurm_script_picks_and_reserves_its_rendezvous_port(tmp_path):
    """train.sbatch's rendezvous port is picked on the head node and reserved as the servers'
    ports are (slurm/ports.sh): a port another job holds is skipped, the reservation goes at the
    script's exit, and an RDZV_PORT in use is an error before anything starts."""
    import os
    import re
    import socket
    import subprocess
    import sys

    locks = tmp_path / "locks"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "RDZV_PORT"}
    env.update(PARAMS="params/paper/03_train.yaml", STAGE="180K", SLURM_JOB_ID="5", DRY_RUN="1",
               LONGCTX_PYTHON=sys.executable, SLURM_SUBMIT_DIR=str(ROOT), LONGCTX_PORT_LOCKS=str(locks),
               LONGCTX_RUNS=str(tmp_path / "runs"), PYTHONPATH=str(ROOT / "lib"))

    def dry(**extra) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(ROOT / "slurm/train.sbatch")], env={**env, **extra}, capture_output=True,
                              text=True, timeout=60)

    def port_of(done: subprocess.CompletedProcess) -> int:
        assert done.returncode == 0, done.stderr
        return int(re.search(r"--rdzv-endpoint=localhost:(\d+)", done.stdout).group(1))

    first = port_of(dry())
    assert 20000 <= first < 32000 and first != 29500 and list(locks.iterdir()) == []   # released at exit
    (locks / str(first)).write_text(str(os.getpid()))     # another job (alive: this process) holds it
    second = port_of(dry())
    assert second != first and (locks / str(first)).read_text() == str(os.getpid())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        refused = dry(RDZV_PORT=str(taken))
    assert refused.returncode != 0 and f"PORT={taken} is in use" in refused.stderr and "train:" not in refused.stdout


def _stage_dict(stage: Stage) -> dict:
    from longctx.core.config import to_dict

    return to_dict(stage)


# --------------------------------------------------------------------------- kill and resume


def test_killed_run_resumes_to_the_same_loss_curve(tmp_path, one_thread):
    samples = write_samples(tmp_path / "samples")
    killed = tiny_config(tmp_path, samples, sp=2, output_dir=str(tmp_path / "run_killed"), stop_after_steps=3)
    result = launch_local(killed, echo=False, check=False)
    assert result.returncode != 0 and "stopping at step 3" in result.stdout
    assert [r["step"] for r in read_log(tmp_path / "run_killed/a/train_log.csv")] == [1, 2, 3]
    resumed = tiny_config(tmp_path, samples, sp=2, output_dir=str(tmp_path / "run_killed"))
    result = launch_local(resumed, echo=False)
    assert "resumed from" in result.stdout and "at step 2" in result.stdout

    single = tiny_config(tmp_path, samples, sp=1, export_hf=True)   # one process, no FSDP, no SP
    summaries = train.train(single)
    for stage, summary in zip("ab", summaries):
        b = read_log(tmp_path / f"run_killed/{stage}/train_log.csv")
        one = read_log(tmp_path / f"run_sp1/{stage}/train_log.csv")
        assert [r["step"] for r in one] == [r["step"] for r in b] == list(range(1, len(b) + 1))
        assert summary["losses"] == [r["loss"] for r in one]
        np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in one], atol=1e-5, rtol=0)
        # gradient scale, not only loss
        np.testing.assert_allclose([r["grad_norm"] for r in b], [r["grad_norm"] for r in one], rtol=1e-4, atol=0)
        assert all(r["tokens"] > 0 and r["answer_tokens"] > 0 and r["peak_mem_gb"] > 0 for r in b)
    assert (tmp_path / "run_killed/b/final/trainer_state.json").is_file()
    assert not list((tmp_path / "run_killed/a/checkpoints").glob("step_*"))   # superseded by final/
    again = train.train(single)                              # finished stages are skipped
    assert all(s["skipped"] for s in again)
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "run_sp1/b/hf", dtype="auto")   # stage b, for evaluation
    assert exported.config.rope_parameters["rope_theta"] == 3e4 and exported.config.use_cache
    assert exported.dtype == torch.bfloat16


# --------------------------------------------------------------------------- gradient accumulation


def _accumulation_samples() -> list[dict]:
    rng = np.random.default_rng(5)
    out = []
    for length in (40, 33, 37, 30):                  # odd lengths: padded at sp=2
        ids = rng.integers(1, 256, length)
        out.append({"input_ids": ids, "labels": np.where(rng.random(length) < 0.4, ids, -100)})
    return out


def _accumulation_config(sp: int) -> TrainConfig:
    stage = {"name": "a", "samples": "unused", "seq_len": 64, "sp": sp, "global_batch": 4,
             "rope": {"type": "default", "theta": 1e4}}
    return load_params(TrainConfig, ROOT / "params/demo/03_train.yaml",
                       {"tiny": TINY, "stages": [stage], "gpus_per_node": 2, "loss_chunk_tokens": 7})


def _one_step_gradients(sp: int, check_sharded: bool):
    """Gradients (full tensors) and norm of one optimizer step of the 4 samples on this grid."""
    from longctx.train.model import build_model
    from torch.distributed.tensor import DTensor

    par = dist.init(sp=sp)
    cfg = _accumulation_config(sp)
    lay = layout(cfg.stages[0], par.world_size)
    model = build_model(cfg, cfg.stages[0], par)
    samples = _accumulation_samples()
    micro = train.step_batches([samples[i] for i in range(len(samples))[par.dp_rank::lay.dp]], par)
    assert len(micro) == lay.grad_accum
    seen = []

    def sharded_between_micro_batches(k: int) -> None:
        for name, p in model.named_parameters():
            assert isinstance(p.grad, DTensor), f"{name}: no sharded gradient after micro-batch {k}"
            local = p.grad.to_local()
            assert local.shape == p.to_local().shape and local.numel() <= -(-p.shape[0] // par.world_size) * \
                p[0].numel(), f"{name}: gradient {tuple(local.shape)} is not a 1/{par.world_size} shard"
        seen.append(k)

    count, _ = train.accumulate_gradients(model, micro, par, None, sharded_between_micro_batches if check_sharded else None)
    assert not check_sharded or seen == list(range(len(micro)))
    params = [p for p in model.parameters()]
    norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    full = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).numpy().copy()
            for n, p in model.named_parameters()}   # numpy: tensors would cross processes by shared memory
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return count, float(norm), full if par.is_main else None


def _accumulation_worker():
    return [_one_step_gradients(sp, check_sharded=True) for sp in (2, 1)]   # sp=2 dp=1, then sp=1 dp=2


# on the 2 ranks test_loss.py and test_ulysses.py use too (tests/spawned_worlds.py)
spawned_worlds.register(2, "test_train", _accumulation_worker)


def test_accumulated_gradients_stay_sharded_and_equal_one_process(one_thread):
    per_rank = spawned_worlds.results(2, "test_train")
    count, norm, reference = _one_step_gradients(1, check_sharded=False)   # this process: world 1, no FSDP
    assert reference and norm > 0
    for sp, (n, dist_norm, grads) in zip((2, 1), per_rank[0]):
        assert n == count
        assert dist_norm == pytest.approx(norm, rel=1e-5), f"sp={sp}: grad norm {dist_norm} vs {norm}"
        assert grads.keys() == reference.keys()
        for name, g in grads.items():
            np.testing.assert_allclose(g, reference[name], atol=1e-6, rtol=1e-4, err_msg=f"sp={sp} {name}")
