"""Stage-3 jobs: launching with a deadline, stopping at SLURM's time-limit warning, exporting.

* ``launch_local`` kills torchrun and its workers at the deadline even while they print nothing.
* ``$LONGCTX_STOP_FILE`` (created by ``slurm/train.sbatch`` on USR1) makes a stage checkpoint
  after its current step and exit 0; the resumed run ends with the uninterrupted loss curve.
* ``slurm/train.sbatch`` itself, run by bash here, requeues the job after a clean stop, whether
  SLURM's warning or the trainer's own deadline check (the job's end from ``squeue``) stopped it.
* ``export_hf`` writes bf16 weights and the RoPE in both transformers 5 and 4.x keys; transformers
  4.56 (pyproject's floor), run from a side virtual environment when present, loads it with the
  exact frequencies stage 3 trained with.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from longctx.train import dist, rope
from longctx import train
from longctx.core.config import load_params
from longctx.train.config import TrainConfig
from longctx.train.log import read_log
from test_train import ROOT, TINY, one_thread, tiny_config, write_samples  # noqa: F401 (one_thread: fixture)


# --------------------------------------------------------------------------- launching and stopping


def test_launch_timeout_kills_the_process_tree(tmp_path, monkeypatch):
    """A command that prints, then hangs without output and ignores SIGTERM (like a rank stuck in
    a collective), is killed with its child at the deadline, and the caller gets TimeoutError."""
    import subprocess
    import sys
    import time

    from longctx.train import launch as train_launch

    monkeypatch.setattr(train_launch, "KILL_GRACE_S", 1.0)
    pid_file = tmp_path / "child.pid"
    script = ("import signal, subprocess, sys, time\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
              "print('started', flush=True)\n"
              "time.sleep(600)\n")
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"(?s)still running after 3 s.*Last output:\nstarted"):
        train_launch.run_command([sys.executable, "-c", script], echo=False, timeout_s=3)
    assert time.monotonic() - start < 60
    child = int(pid_file.read_text())
    for _ in range(50):                                   # reaped by init once its parent is gone
        if subprocess.run(["ps", "-p", str(child), "-o", "stat="], capture_output=True, text=True).stdout.strip() \
                in ("", "Z"):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"child {child} of the timed-out command is still running")
    done = train_launch.run_command([sys.executable, "-c", "print('ok')"], echo=False, timeout_s=60)
    assert done.returncode == 0 and done.stdout == "ok\n"


def test_stop_file_saves_a_checkpoint_and_exits_cleanly(tmp_path, monkeypatch, one_thread):
    """SLURM's time-limit warning (the job script creates $LONGCTX_STOP_FILE): the stage saves a
    checkpoint after the current step and main() returns 0; the next run resumes there and ends
    with the uninterrupted run's loss curve."""
    from longctx.train.launch import write_params

    samples = write_samples(tmp_path / "samples")
    stop = tmp_path / "stop"
    monkeypatch.setenv(train.STOP_FILE_ENV, str(stop))
    straight = tiny_config(tmp_path, samples, sp=1, output_dir=str(tmp_path / "straight"))
    train.train(straight, only_stage="a")                     # no stop file: runs through
    stopped = tiny_config(tmp_path, samples, sp=1, output_dir=str(tmp_path / "stopped"), checkpoint_every=50)
    params = write_params(stopped, tmp_path / "stopped.yaml")
    stop.touch()
    assert train.main(["--params", str(params), "--stage", "a"]) == 0
    assert [r["step"] for r in read_log(tmp_path / "stopped/a/train_log.csv")] == [1]
    assert (tmp_path / "stopped/a/checkpoints/step_000001/trainer_state.json").is_file()   # not a multiple of 50
    stop.unlink()
    summary = train.train(stopped, only_stage="a")[0]
    expected = [r["loss"] for r in read_log(tmp_path / "straight/a/train_log.csv")]
    assert len(expected) == 4
    np.testing.assert_allclose(summary["losses"], expected, atol=1e-9, rtol=0)


SRUN = """#!/bin/bash
# srun on one node: drop srun's options, run the command here
while [[ "$1" == --* ]]; do shift; done
exec "$@"
"""
SQUEUE = """#!/bin/bash
# squeue -h -j ID -o %e: the job's end, in SLURM's local ISO format, a day from now
date -d "+1 day" +%Y-%m-%dT%H:%M:%S
"""
SCONTROL = """#!/bin/bash
case "$1 $2" in
    "show hostnames") echo localhost ;;
    requeue*) echo "$2" >> "$REQUEUE_LOG" ;;
    *) exit 2 ;;
esac
"""


@pytest.mark.parametrize("trigger", ["usr1", "deadline"])
def test_sbatch_time_limit_checkpoints_and_requeues(tmp_path, one_thread, trigger):
    """slurm/train.sbatch run by bash on this machine (SLURM itself is absent: ``srun`` runs its
    command locally, ``scontrol`` answers hostnames and records requeues, ``squeue`` gives the
    job's end a day away). usr1: SLURM's time-limit warning mid-stage; deadline: a job end 8 s
    after the start, which a 20,000-step stage cannot reach, so the trainer stops by itself when the
    next step and a save no longer fit. Both must end in a checkpoint, exit status 0 and a requeue.
    (8 s, not more: the test waits for the job's end; where start-up takes longer, the trainer
    finds the end already passed after its first step and stops there, which still needs the
    decision: a trainer that ignores the end runs on past the 300 s wait.)"""
    import signal
    import subprocess
    import sys
    import time

    from longctx.train.dist import _free_port
    from longctx.train.launch import write_params

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("squeue", SQUEUE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    samples = write_samples(tmp_path / "samples")
    epochs = 50 if trigger == "usr1" else 5000                # 200 steps; 20,000 cannot fit in 20 s
    cfg = tiny_config(tmp_path, samples, sp=1, output_dir=str(tmp_path / "run"), checkpoint_every=100000,
                      stages=[{"name": "a", "samples": str(samples), "seq_len": 64, "sp": 1, "global_batch": 2,
                               "epochs": epochs, "rope": {"type": "default", "theta": 1e4}}])
    params = write_params(cfg, tmp_path / "params.yaml")
    steps = epochs * 4
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PARAMS": str(params), "STAGE": "a",
           "SLURM_JOB_ID": "4242", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "localhost", "GPUS_PER_NODE": "1",
           "SLURM_SUBMIT_DIR": str(ROOT), "LONGCTX_PYTHON": sys.executable, "RDZV_PORT": str(_free_port()),
           "REQUEUE_LOG": str(tmp_path / "requeued"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("LONGCTX_DEADLINE", None)
    if trigger == "deadline":
        env["LONGCTX_DEADLINE"] = str(int(time.time()) + 8)
    job = subprocess.Popen(["bash", str(ROOT / "slurm/train.sbatch")], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in job.stdout:
        lines.append(line)
        if trigger == "usr1" and "] step 3/200 " in line:
            job.send_signal(signal.SIGUSR1)                  # what --signal=B:USR1@N sends
    assert job.wait(timeout=300) == 0, "".join(lines[-30:])
    out = "".join(lines)
    assert f"step {steps}/{steps}" not in out
    if trigger == "usr1":
        assert "stop requested" in out
        assert "h from now ($LONGCTX_DEADLINE)" in out     # squeue's end time reached the trainer
    else:
        assert "s left before the job's end ($LONGCTX_DEADLINE), less than 1.5 x (longest step" in out
    assert (tmp_path / "requeued").read_text().split() == ["4242"]
    saved = read_log(tmp_path / "run/a/train_log.csv")[-1]["step"]
    assert (3 if trigger == "usr1" else 1) <= saved < steps
    assert (tmp_path / f"run/a/checkpoints/step_{saved:06d}/trainer_state.json").is_file()
    assert not (ROOT / "runs/slurm/stop-4242").exists()


# --------------------------------------------------------------------------- transformers export

# ./dev setup builds .venv-floor with pyproject's lowest transformers
TRANSFORMERS4_PYTHON = Path(os.environ.get("LONGCTX_TRANSFORMERS4_PYTHON", ROOT / ".venv-floor" / "bin" / "python"))
EXPORT_ROPES = {"llama3": {"type": "llama3", "theta": 5e5, "factor": 8.0, "original_max_position_embeddings": 32},
                "default": {"type": "default", "theta": 3.58e9}}


def _export(tmp_path: Path, kind: str):
    """A tiny stage-3 model of RoPE ``kind`` exported with ``checkpoint.export_hf``."""
    from longctx.train import checkpoint
    from longctx.train.model import build_model

    cfg = load_params(TrainConfig, ROOT / "params/demo/03_train.yaml",
                      {"tiny": TINY, "stages": [{"name": kind, "seq_len": 64, "rope": EXPORT_ROPES[kind]}]})
    model = build_model(cfg, cfg.stages[0], dist.init(sp=1))
    checkpoint.export_hf(model, tmp_path / kind)
    return model, tmp_path / kind


@pytest.mark.parametrize("kind", list(EXPORT_ROPES))
def test_export_is_bf16_with_the_rope_keys_transformers_4_reads(tmp_path, kind):
    import json

    from transformers import AutoModelForCausalLM

    model, folder = _export(tmp_path, kind)
    params = model.config.rope_parameters
    config = json.loads((folder / "config.json").read_text())
    # what transformers 4.x (and vLLM's config reader) take: rope_theta, rope_scaling, torch_dtype
    assert config["rope_theta"] == EXPORT_ROPES[kind]["theta"] and config["torch_dtype"] == "bfloat16"
    if kind == "default":
        assert config["rope_scaling"] is None
    else:
        assert config["rope_scaling"] == {k: v for k, v in params.items() if k != "rope_theta"}
        assert config["rope_scaling"]["rope_type"] == "llama3" and config["rope_scaling"]["factor"] == 8.0
    assert config["rope_parameters"] == params and config["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")     # transformers 5 reads it back
    assert loaded.dtype == torch.bfloat16 and loaded.config.rope_parameters == params
    ours = {k.removeprefix("lm.").replace("_checkpoint_wrapped_module.", ""): v for k, v in model.state_dict().items()}
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, ours[name].to(torch.bfloat16), atol=0, rtol=0, msg=name)


@pytest.mark.skipif(not TRANSFORMERS4_PYTHON.is_file(), reason=(
    f"no transformers 4.x interpreter at {TRANSFORMERS4_PYTHON}: ./dev setup builds it (or set "
    "LONGCTX_TRANSFORMERS4_PYTHON)"))
@pytest.mark.parametrize("kind", list(EXPORT_ROPES))
def test_lowest_supported_transformers_loads_the_export(tmp_path, kind):
    """transformers 4.56 (pyproject's floor) loads the export in bf16 and builds exactly the
    rotary frequencies stage 3 trained with (float32, ``rope.inv_freq``)."""
    import json
    import subprocess

    model, folder = _export(tmp_path, kind)
    probe = ("import json, sys, transformers\n"
             "from transformers import AutoModelForCausalLM\n"
             "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype='auto')\n"
             "print(json.dumps({'version': transformers.__version__, 'rope_theta': m.config.rope_theta,\n"
             "    'rope_scaling': m.config.rope_scaling, 'dtype': str(m.dtype),\n"
             "    'inv_freq': m.model.rotary_emb.inv_freq.tolist()}))\n")
    out = subprocess.run([str(TRANSFORMERS4_PYTHON), "-c", probe, str(folder)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["version"].startswith("4."), seen["version"]
    assert seen["rope_theta"] == EXPORT_ROPES[kind]["theta"] and seen["dtype"] == "torch.bfloat16"
    params = model.config.rope_parameters
    expected, _ = rope.inv_freq(params, 32 // 4, 64, dtype=torch.float32)
    assert seen["inv_freq"] == expected.tolist()
