"""One evaluation item, the same shape for every benchmark, and its JSONL round trip.

A :class:`Sample` is what a backend needs to answer (the user prompt, an optional assistant
prefix, a generation budget) plus what the scorer needs afterwards (references, metric, task
metadata). Prepared RULER / InfiniteBench data is cached as JSONL of samples.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Sample", "write_samples", "read_samples"]


@dataclass
class Sample:
    benchmark: str                 # ruler / infinitebench / longbench / mmlu / babilong
    task: str                      # e.g. niah_single_1, passkey, narrativeqa, mmlu
    index: int                     # position within (task, context_length)
    context_length: int            # target length bucket in tokens (0 = the dataset's own length)
    prompt: str                    # the user message, template filled
    references: list[Any]          # gold answers; the metric decides how they are used
    max_new_tokens: int            # generation budget (part of the context window)
    answer_prefix: str = ""        # text the assistant turn starts with (RULER's answer prefix)
    n_tokens: int = 0              # tokens of prompt + answer_prefix under the sizing tokenizer
    chat: bool = True              # wrap in the model's chat template
    choices: list[str] = field(default_factory=list)  # multiple-choice letters (MMLU log-likelihood)
    meta: dict[str, Any] = field(default_factory=dict)  # needle depths, truncation, sources ...

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def write_samples(path: str | Path, samples: Iterable[Sample]) -> None:
    """Write atomically: a crashed preparation never leaves a half file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    with tmp.open("w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(sample.to_json() + "\n")
    tmp.replace(path)


def read_samples(path: str | Path) -> list[Sample]:
    with Path(path).open(encoding="utf-8") as handle:
        return [Sample(**json.loads(line)) for line in handle if line.strip()]
