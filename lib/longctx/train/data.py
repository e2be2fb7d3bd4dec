"""Training data of one stage: stage-2 samples, a deterministic order, and model-ready batches.

:class:`SampleSet` adapts any sequence of ``{"input_ids", "labels"}`` dicts (what
``longctx.concat.samples.open_samples`` returns, or an in-memory list) and validates each item.
:class:`StepPlan` fixes which samples every (step, data-parallel rank) sees: a seeded
permutation per epoch, so a resumed run replays exactly the order of an uninterrupted one.
:func:`to_batch` shifts labels on the full sequence (before sequence sharding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import resolve_path
from .config import Stage
from .loss import shift_labels

__all__ = ["SampleSet", "open_stage_samples", "StepPlan", "to_batch"]


class SampleSet(Sequence):
    """Random access to training samples; ``items`` is any sequence of dicts with 1-D integer
    ``input_ids`` and ``labels`` of equal length (labels unshifted, -100 where no loss)."""

    def __init__(self, items: Sequence[dict[str, Any]], name: str = "samples", max_tokens: int | None = None):
        self.items = items
        self.name = name
        self.max_tokens = max_tokens

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:  # type: ignore[override]
        item = self.items[index]
        ids = np.asarray(item["input_ids"], dtype=np.int64)
        labels = np.asarray(item["labels"], dtype=np.int64)
        if ids.ndim != 1 or ids.shape != labels.shape or ids.size < 2:
            raise ValueError(f"{self.name}[{index}]: input_ids {ids.shape} and labels {labels.shape} "
                             "must be equal 1-D arrays of at least 2 tokens")
        if self.max_tokens is not None and ids.size > self.max_tokens:
            raise ValueError(f"{self.name}[{index}] has {ids.size} tokens, more than the stage's seq_len="
                             f"{self.max_tokens}; raise seq_len or regenerate the stage-2 samples")
        return {"input_ids": ids, "labels": labels}


def open_stage_samples(stage: Stage, root: Path | None = None) -> SampleSet:
    """The stage's stage-2 samples, with a clear message when stage 2 has not run yet."""
    path = resolve_path(stage.samples, root)
    name = stage.samples_stage or stage.name
    if not path.exists() or (path.is_dir() and not (path / f"{name}.parquet").is_file()):
        raise FileNotFoundError(
            f"stage {stage.name}: no stage-2 samples at {path}"
            + ("" if path.suffix == ".parquet" else f" (expected {name}.parquet there)")
            + "; run notebooks/02_concatenate.ipynb (or python -m longctx.concatenate --params "
              "params/demo/02_concatenate.yaml) first")
    from ..concat.samples import open_samples

    samples = open_samples(path) if path.is_file() else open_samples(path, stage=name)
    return SampleSet(samples, name=str(path), max_tokens=stage.seq_len)


@dataclass(frozen=True)
class StepPlan:
    """Which samples each optimizer step takes, per data-parallel rank.

    Step ``t`` uses the ``global_batch`` consecutive entries ``order[t*G : (t+1)*G]``; rank ``r``
    takes entries ``r, r + dp, r + 2*dp, ...`` of them (its ``grad_accum`` micro-batches).
    """

    order: np.ndarray
    steps: int
    dp: int
    grad_accum: int

    @classmethod
    def build(cls, n_samples: int, stage: Stage, dp: int, grad_accum: int, seed: int, stage_index: int) -> StepPlan:
        rng = np.random.default_rng([seed, stage_index])
        order = np.concatenate([rng.permutation(n_samples) for _ in range(stage.epochs)])
        per_step = dp * grad_accum
        steps = len(order) // per_step
        if stage.max_steps:
            steps = min(steps, stage.max_steps)
        if steps == 0:
            raise ValueError(f"stage {stage.name}: {n_samples} samples x {stage.epochs} epoch(s) cannot fill one "
                             f"step of global_batch={per_step}")
        return cls(order=order, steps=steps, dp=dp, grad_accum=grad_accum)

    def indices(self, step: int, dp_rank: int) -> list[int]:
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} outside 0..{self.steps - 1}")
        chunk = self.order[step * self.dp * self.grad_accum:(step + 1) * self.dp * self.grad_accum]
        return [int(i) for i in chunk[dp_rank::self.dp]]


def to_batch(sample: dict[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """``[1, S]`` tensors: ``input_ids``, next-token ``labels`` (shifted here, on the full
    sequence) and ``position_ids`` (0..S-1: one sample is one document sequence)."""
    ids = torch.as_tensor(sample["input_ids"], dtype=torch.long)[None]
    labels = torch.as_tensor(sample["labels"], dtype=torch.long)[None]
    positions = torch.arange(ids.shape[1])[None]
    return {"input_ids": ids.to(device), "labels": shift_labels(labels, positions).to(device),
            "position_ids": positions.to(device)}

