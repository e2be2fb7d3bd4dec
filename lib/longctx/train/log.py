"""Training metrics: one CSV row per optimizer step (rank 0), optional TensorBoard / W&B.

Columns of ``{output_dir}/{stage}/train_log.csv``: ``stage, step, loss, answer_tokens, tokens,
tokens_per_s, lr, grad_norm, peak_mem_gb, step_s``. ``tokens`` counts real (unpadded) tokens of
the step over all data-parallel ranks; ``peak_mem_gb`` is the GPU's peak allocation
(``torch.cuda.max_memory_allocated``) or, on CPU, the process's peak resident set. A resumed
run first drops the rows after its checkpoint, so the file reads like one uninterrupted run.
"""

from __future__ import annotations

import csv
import resource
from pathlib import Path
from typing import Any

import torch

from . import dist

__all__ = ["COLUMNS", "MetricsLog", "peak_memory_gb", "read_log"]

COLUMNS = ["stage", "step", "loss", "answer_tokens", "tokens", "tokens_per_s", "lr", "grad_norm",
           "peak_mem_gb", "step_s"]


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def read_log(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``train_log.csv`` with numbers parsed."""
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [{k: (v if k == "stage" else float(v) if "." in v or "e" in v.lower() else int(v)) for k, v in r.items()}
            for r in rows]


class MetricsLog:
    """Append-only CSV on rank 0 (other ranks: no-ops), truncated to ``resume_step`` on open."""

    def __init__(self, path: Path, resume_step: int = 0, tensorboard_dir: Path | None = None,
                 wandb_project: str = "", run_name: str = ""):
        self.path = Path(path)
        self.main = dist.current().is_main
        self._tb = self._wandb = None
        if not self.main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_log(self.path) if r["step"] <= resume_step]
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(tensorboard_dir))
            except ImportError:
                dist.print0("tensorboard is not installed; logging to CSV only")
        if wandb_project:
            try:
                import wandb

                self._wandb = wandb.init(project=wandb_project, name=run_name, resume="allow")
            except ImportError:
                dist.print0("wandb is not installed; logging to CSV only")

    def write(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow({k: row.get(k, "") for k in COLUMNS})
        numbers = {f"{row['stage']}/{k}": v for k, v in row.items() if k not in ("stage", "step")}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, row["step"])
        if self._wandb is not None:  # W&B wants one increasing step over the run: the stage's step is a metric
            self._wandb.log({**numbers, f"{row['stage']}/step": row["step"]})

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
