"""Training metrics: one CSV row per optimizer step (rank 0), TensorBoard event files, optional W&B.

Columns of ``{output_dir}/{stage}/train_log.csv`` (:data:`COLUMNS`): ``stage, step, loss,
answer_tokens, tokens, tokens_per_s, mfu, lr, grad_norm, peak_mem_gb, step_s, eta_s``.
``tokens`` counts real (unpadded) tokens of the step over all data-parallel ranks; ``mfu`` is
the step's model FLOPs over ``world_size x peak_flops_per_gpu`` (``longctx.train.flops``);
``peak_mem_gb`` is the largest peak over all ranks (an all-reduce MAX) of the GPU's peak
allocation (``torch.cuda.max_memory_allocated``) or, on CPU, the process's peak resident set;
``eta_s`` is the stage's time to go: the mean step time of this run times the steps left, plus
the mean checkpoint save time times the saves left. A resumed run first drops the rows after its
checkpoint, so the file reads like one uninterrupted run.

TensorBoard (the ``train`` extra installs it; ``tensorboard: true`` by default): event files in
``{output_dir}/{stage}/tensorboard``, tags ``{stage}/{column}`` against the stage's step, the
same values as the CSV; a resumed run purges the events after its checkpoint (``purge_step``).
``tensorboard --logdir runs/paper/03_train`` shows every stage.

W&B (``wandb_project``, extra ``wandb``): one run per stage whose id is stored in
``{output_dir}/{stage}/wandb_run_id`` on its first start and resumed (``resume="allow"``) by
every requeued or resubmitted job, logging at the stage's step; steps W&B already has (those
re-done after the checkpoint, with the same values) are not sent again.
"""

from __future__ import annotations

import csv
import resource
import secrets
from pathlib import Path
from typing import Any

import torch

from . import dist

__all__ = ["COLUMNS", "MetricsLog", "peak_memory_gb", "read_log", "WANDB_ID_FILE"]

COLUMNS = ["stage", "step", "loss", "answer_tokens", "tokens", "tokens_per_s", "mfu", "lr", "grad_norm",
           "peak_mem_gb", "step_s", "eta_s"]
WANDB_ID_FILE = "wandb_run_id"


def peak_memory_gb(device: torch.device) -> float:
    """This process's peak memory in GiB (the caller takes the maximum over ranks)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _number(value: str) -> int | float | None:
    if value == "":
        return None   # a column an older log did not have
    return float(value) if "." in value or "e" in value.lower() or "n" in value.lower() else int(value)


def read_log(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``train_log.csv`` with numbers parsed (empty cells, from an older log: None)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [{k: (v if k == "stage" else _number(v)) for k, v in r.items()} for r in rows]


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
            writer.writerows({k: "" if r.get(k) is None else r[k] for k in COLUMNS} for r in kept)
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:   # the train extra installs it; a bare torch install may lack it
                dist.print0("tensorboard is not installed (pip install -e '.[train]'); logging to CSV only")
            else:
                # purge_step: events a killed run wrote after its checkpoint are hidden, as the CSV rows are dropped
                self._tb = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1 if resume_step else None)
        if wandb_project:
            self._wandb = _wandb_run(self.path.parent, wandb_project, run_name)

    def write(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow({k: row.get(k, "") for k in COLUMNS})
        numbers = {f"{row['stage']}/{k}": row[k] for k in COLUMNS if k not in ("stage", "step") and k in row}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, row["step"])
            self._tb.flush()   # a 50-hour stage: every step visible at once, and nothing lost at a kill
        # W&B's step only increases: steps it already has (re-done after a requeue, same values) are skipped
        if self._wandb is not None and row["step"] >= self._wandb.step:
            self._wandb.log(numbers, step=row["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _wandb_run(folder: Path, project: str, name: str):
    """The stage's W&B run: a new id on the first start, stored in ``folder``; the same id after."""
    try:
        import wandb
    except ImportError:
        dist.print0("wandb is not installed (pip install -e '.[wandb]'); logging to CSV and TensorBoard only")
        return None
    id_file = folder / WANDB_ID_FILE
    if id_file.is_file():
        run_id = id_file.read_text(encoding="utf-8").strip()
    else:
        run_id = secrets.token_hex(6)   # W&B ids: letters and digits, unique in the project
        tmp = id_file.with_suffix(".tmp")
        tmp.write_text(run_id + "\n", encoding="utf-8")
        tmp.replace(id_file)
    run = wandb.init(project=project, name=name, id=run_id, resume="allow", dir=str(folder))
    dist.print0(f"W&B run {run_id} ({'resumed' if run.resumed else 'new'}; id kept in {id_file})")
    return run
