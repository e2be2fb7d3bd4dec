"""The job's end, and the margin a stage keeps before it: stop in time to checkpoint and requeue.

A SLURM job ends at a fixed time. ``slurm/train.sbatch`` exports that time as
``$LONGCTX_DEADLINE`` (Unix seconds, from ``squeue -o %e``); SLURM 23.02 and later also export
``$SLURM_JOB_END_TIME``, read when the first is absent. After every step the trainer compares
the time left with what one more step and a checkpoint save need, measured: ``safety x (longest
step + longest save)`` of the stage so far (a save not yet measured counts as one more step).
The longest times are kept in ``{output_dir}/{stage}/timing.json`` so a requeued job starts with
them. When the next step would not fit, the stage saves a checkpoint and stops for a requeue.
SLURM's ``USR1`` warning (``--signal``, margin from the dry run's step estimate) stays as the
backstop for a job whose end time is unknown or that is cut short.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

__all__ = ["DEADLINE_ENV", "job_end", "Deadline"]

DEADLINE_ENV = "LONGCTX_DEADLINE"

now = time.time   # the wall clock; tests replace it


def job_end(environ: dict[str, str] | None = None) -> tuple[float | None, str]:
    """``(Unix time the job ends, where that came from)``, or ``(None, reason)`` when unknown."""
    environ = os.environ if environ is None else environ
    for name in (DEADLINE_ENV, "SLURM_JOB_END_TIME"):
        value = environ.get(name, "").strip()
        if not value:
            continue
        try:
            end = float(value)
        except ValueError:
            raise ValueError(f"${name}={value!r}: expected the job's end as Unix seconds") from None
        if end > 0:
            return end, f"${name}"
    return None, f"no ${DEADLINE_ENV} or $SLURM_JOB_END_TIME"


class Deadline:
    """Measured step and save times of a stage and the stop decision they imply."""

    def __init__(self, end: float | None, safety: float, timing_file: Path | None = None, source: str = ""):
        self.end, self.safety, self.source = end, safety, source
        self.timing_file = Path(timing_file) if timing_file else None
        self.max_step_s = self.max_save_s = 0.0
        self.saves: list[float] = []
        if self.timing_file is not None and self.timing_file.is_file():
            saved = json.loads(self.timing_file.read_text(encoding="utf-8"))
            self.max_step_s, self.max_save_s = float(saved["max_step_s"]), float(saved["max_save_s"])

    def describe(self) -> str:
        if self.end is None:
            return f"job end unknown ({self.source}): stopping only on SLURM's USR1 warning"
        stamp = datetime.datetime.fromtimestamp(self.end, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (f"job ends {stamp}, {(self.end - now()) / 3600:.2f} h from now ({self.source}); stopping for a "
                f"requeue when less than {self.safety:g} x (longest step + checkpoint save) is left")

    def record_step(self, seconds: float) -> None:
        self.max_step_s = max(self.max_step_s, seconds)

    def record_save(self, seconds: float) -> None:
        self.saves.append(seconds)
        self.max_save_s = max(self.max_save_s, seconds)
        if self.timing_file is not None:
            tmp = self.timing_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"max_step_s": self.max_step_s, "max_save_s": self.max_save_s}), encoding="utf-8")
            tmp.replace(self.timing_file)

    @property
    def save_s(self) -> float:
        """The save time the decision assumes: the longest measured, else one step."""
        return self.max_save_s or self.max_step_s

    def need_s(self) -> float:
        return self.safety * (self.max_step_s + self.save_s)

    def check(self) -> str:
        """Empty while another step and a save fit before the end; else the reason to stop now."""
        if self.end is None:
            return ""
        left, need = self.end - now(), self.need_s()
        if left >= need:
            return ""
        save = f"{self.max_save_s:.1f} s" if self.max_save_s else f"not measured yet, taken as a step: {self.save_s:.1f} s"
        return (f"{left:.0f} s left before the job's end ({self.source}), less than {self.safety:g} x (longest step "
                f"{self.max_step_s:.1f} s + checkpoint save {save}) = {need:.0f} s")
