"""Shared by the stage-4 cluster tests: slurm/evaluate.sbatch run as a job runs it, and the
``sitecustomize`` that makes torch unimportable for a client that must not need it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "evaluate.sbatch"
PAPER = ROOT / "params" / "paper" / "04_evaluate.yaml"


def run_script(env: dict[str, str], params: Path = PAPER, timeout: float = 60, check: bool = True):
    full = {**os.environ, "LONGCTX_PYTHON": sys.executable, "SLURM_SUBMIT_DIR": str(ROOT),
            "PYTHONPATH": str(ROOT / "lib"), **env}
    return subprocess.run(["bash", str(SCRIPT), str(params)], env=full, capture_output=True, text=True,
                          timeout=timeout, check=check)


def dry_lines(out: str) -> dict[str, list[str] | str]:
    found = dict(line.split(": ", 1) for line in out.splitlines())
    return {k: shlex.split(v) if k in ("serve", "evaluate") else v for k, v in found.items()}



_BLOCK_TORCH = "import sys\nsys.modules['torch'] = None  # any 'import torch' raises ImportError\n"
