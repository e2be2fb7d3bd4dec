"""SLURM from Python for the rehearsal (``python -m longctx.rehearse``): submit the lines a
launcher renders, wait for the jobs, read what ``sacct`` recorded (every run of a job, requeues
included) and find each job's log.

Job logs are under the run root (``$LONGCTX_RUNS/slurm`` when set, else ``runs/slurm``), where the
launchers' ``--output`` puts them.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .core.config import runs_root

__all__ = ["Job", "submit", "wait", "sacct", "log_of", "tail", "free_port", "run_checked"]


@dataclass
class Job:
    """One job (or array task) as sacct reports it; ``records`` lists every run, requeues included."""
    job_id: str
    name: str
    states: list[str] = field(default_factory=list)
    exit_codes: list[str] = field(default_factory=list)

    @property
    def final(self) -> str:
        return self.states[-1] if self.states else "UNKNOWN"


def run_checked(cmd: list[str], **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def submit(lines: list[str], root: Path, env_file: str) -> list[str]:
    """Run launcher-rendered shell ``lines`` from ``root`` with bash; returns the submitted job ids.

    The lines run as rendered, except that ``source slurm/cluster.env`` reads ``env_file``
    instead (the rehearsal must not touch the user's own settings). ``sbatch`` is wrapped to
    record each job id it prints; what it prints is passed on unchanged.
    """
    record = tempfile.NamedTemporaryFile("w+", suffix=".jobs", delete=False)
    record.close()
    script = ["set -euo pipefail",
              'sbatch() { local out; out=$(command sbatch "$@") || return $?; echo "$out"; '
              f'echo "$out" | grep -oE "[0-9]+" | head -n 1 >> {record.name}; }}']
    for line in lines:
        script.append(line.replace("source slurm/cluster.env", f"source {env_file}"))
    print("\n".join("  $ " + line for line in script[2:]), flush=True)
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=root, capture_output=True, text=True)
    ids = Path(record.name).read_text().split()
    os.unlink(record.name)
    if result.returncode:
        raise RuntimeError(f"submitting failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    return ids


def _squeue(ids: list[str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %r"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def wait(ids: list[str], what: str, timeout_s: float, during=None) -> None:
    """Until no job of ``ids`` is pending or running; prints their states when they change and
    calls ``during()`` at every poll."""
    deadline = time.monotonic() + timeout_s
    shown = None
    while True:
        queued = _squeue(ids)
        if not queued:
            return
        if during is not None:
            during()
        stuck = [line for line in queued if "DependencyNeverSatisfied" in line]
        if stuck:   # an earlier job of the chain failed: its dependants would wait forever
            subprocess.run(["scancel", *ids], check=False)
            print(f"    {what}: {'; '.join(stuck)}: cancelled the rest of the chain", flush=True)
            return
        state = "; ".join(queued)
        if state != shown:
            print(f"    [{time.strftime('%H:%M:%S')}] {what}: {state}", flush=True)
            shown = state
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: jobs {ids} still queued after {timeout_s:.0f} s: {state}")
        time.sleep(2)


def sacct(ids: list[str], settle_s: float = 60) -> dict[str, Job]:
    """Every run of every job (``sacct -D``: requeued runs too), array tasks one by one.

    slurmdbd writes a job's end a moment after the job leaves the queue, so this waits up to
    ``settle_s`` for no job to be shown RUNNING or PENDING any more."""
    deadline = time.monotonic() + settle_s
    while True:
        out = run_checked(["sacct", "-D", "-X", "-P", "-n", "-j", ",".join(ids), "-o", "JobID,JobName,State,ExitCode"])
        jobs: dict[str, Job] = {}
        for line in out.splitlines():
            job_id, name, state, code = line.split("|")
            job = jobs.setdefault(job_id, Job(job_id, name))
            job.states.append(state.split()[0])
            job.exit_codes.append(code)
        if not any(j.final in ("RUNNING", "PENDING", "REQUEUED") for j in jobs.values()) or time.monotonic() > deadline:
            return jobs
        time.sleep(2)


def log_of(job_id: str) -> str:
    """The job's log: its StdOut as SLURM expanded it while SLURM remembers the job, else the file
    under the run root's slurm/ named after it (the project's scripts log as %x-%j or %x-%A_%a)."""
    out = subprocess.run(["scontrol", "show", "job", job_id.split("_")[0]], capture_output=True, text=True).stdout
    for line in out.splitlines():
        found = re.search(r"StdOut=(\S+)", line)
        if found and "_" not in job_id:
            return found.group(1)
    pattern = f"*-{job_id}.out"
    hits = sorted((runs_root() / "slurm").glob(pattern))
    return str(hits[0]) if hits else str(runs_root() / "slurm" / pattern)


def tail(path: str, n: int = 40) -> str:
    p = Path(path)
    if not p.is_file():
        return f"(no log at {path})"
    return "".join(p.read_text(errors="replace").splitlines(keepends=True)[-n:])


def free_port() -> int:
    """A port free on this machine now (the training rendezvous of the rehearsal's cluster.env)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
