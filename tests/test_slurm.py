"""A real SLURM (the one-node cluster of ``./dev slurm``): jobs as a cluster user submits them.

* a job whose ``--output`` is under ``runs/slurm/`` (the project's scripts' log folder) runs,
  logs, and ``sacct`` reports it COMPLETED;
* the chains the launchers render (stage 1 with the llama.cpp stand-in, stage 3's ``afterok``
  chain) are accepted by ``sbatch`` as rendered: resources, ``--export`` and dependencies; they
  are submitted to a partition that never starts jobs and cancelled, so nothing runs.

The whole chain, run to the end, is ``./dev rehearse`` (a CI step of its own, minutes). These
tests need root and apt-get (Debian) to install and start SLURM, or a running SLURM started by
``./dev slurm start``; elsewhere they skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cluster_up() -> bool:
    return shutil.which("sinfo") is not None and subprocess.run(
        ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip().startswith(("idle", "mixed", "alloc"))


@pytest.fixture(scope="module")
def slurm():
    """The one-node SLURM of slurm/localhost.sh, started (and installed) if needed."""
    if not _cluster_up():
        if os.geteuid() != 0:
            pytest.skip("needs a running SLURM, or root to install and start one (./dev slurm start)")
        if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
            pytest.skip("no SLURM and no apt-get to install one (./dev slurm needs Debian or Ubuntu)")
        started = subprocess.run([str(ROOT / "slurm/localhost.sh"), "start"], capture_output=True, text=True,
                                 timeout=900)
        if started.returncode:
            pytest.skip(f"./dev slurm start could not start a cluster here: {started.stderr.strip()[-500:]}")
    (ROOT / "runs/slurm").mkdir(parents=True, exist_ok=True)
    return ROOT


def _wait_gone(job: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} still queued after {timeout_s} s"
        time.sleep(1)


def test_a_job_logs_under_runs_slurm_and_sacct_says_completed(slurm):
    from longctx.rehearse import sacct

    job = subprocess.run(["sbatch", "--parsable", "--job-name=longctx-test-job", "--output=runs/slurm/%x-%j.out",
                          "--wrap", "echo hello from $SLURM_JOB_ID on $SLURMD_NODENAME"],
                         cwd=slurm, capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    _wait_gone(job)
    log = slurm / f"runs/slurm/longctx-test-job-{job}.out"
    assert log.read_text().startswith(f"hello from {job} on ")
    runs = sacct([job])
    assert runs[job].states == ["COMPLETED"] and runs[job].exit_codes == ["0:0"]


def test_rendered_chains_are_accepted_by_sbatch(slurm, tmp_path):
    """Every line the launchers print, run by bash as printed (only the settings file is the
    rehearsal's), submits jobs with the dependencies and array the chain needs."""
    from longctx.core.config import load_params
    from longctx.generate import launch as generate_launch
    from longctx.generate.params import GenerateParams
    from longctx.rehearse import submit
    from longctx.train import launch as train_launch
    from longctx.train.config import TrainConfig

    env = tmp_path / "cluster.env"
    env.write_text("SBATCH_PARTITION=held\n")   # slurm/localhost.sh's partition that queues and never starts
    gen_params = ROOT / "params/test/01_generate_qa.yaml"
    train_params = ROOT / "params/test/03_train.yaml"
    lines = generate_launch.sbatch_commands(load_params(GenerateParams, gen_params, {"corpus_shards_dir": "x"}),
                                            gen_params, shards=2, model="", tp=1, servers=1, server="llamacpp")
    lines += train_launch.sbatch_commands(load_params(TrainConfig, train_params), train_params)[2:]
    ids = submit(lines, slurm, str(env))
    try:
        assert len(ids) == 5, ids
        shown = {}
        for job in ids:
            text = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
            fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
            shown[job] = fields
            assert fields["JobState"] == "PENDING" and fields["Partition"] == "held", fields
        prep, gen, merge, train1, train2 = (shown[i] for i in ids)
        assert gen["ArrayTaskId"] == "0-1%1" and gen["Dependency"].startswith(f"afterok:{ids[0]}")
        assert merge["Dependency"].startswith(f"afterok:{ids[1]}")
        assert train2["Dependency"].startswith(f"afterok:{ids[3]}") and train1["JobName"] == "longctx-s1"
        assert train1["StdOut"].endswith(f"runs/slurm/longctx-s1-{ids[3]}.out") and train1["TimeLimit"] == "00:10:00"
    finally:
        subprocess.run(["scancel", *ids], check=False)
