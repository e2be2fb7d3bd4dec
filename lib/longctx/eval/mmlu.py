"""MMLU, 5-shot, micro-averaged accuracy: is general knowledge kept after long-context training?

Rows come from ``cais/mmlu`` (config ``all``; the 5 ``dev`` questions of a subject are its shots,
``test`` is scored) through ``datasets``, or local files with the same columns (``question``,
``subject``, ``choices``, ``answer`` as 0-3). The prompt is the original MMLU layout (a subject
header, five solved questions, the open one ending in ``Answer:``), sent as raw text without a
chat template. Scoring: with a local model, the option letter with the highest next-token
log-probability (the original MMLU / lm-eval-harness method); through a chat or completion
server, the first option letter of the greedy reply. Accuracy is micro-averaged: correct
answers over all questions, whatever their subject.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from .hub import load_rows
from .sample import Sample

__all__ = ["load_mmlu", "mmlu_prompt", "score_mmlu_text", "LETTERS", "HUB_ID"]

HUB_ID = "cais/mmlu"
LETTERS = "ABCD"


def _format(row: dict[str, Any], with_answer: bool) -> str:
    lines = [row["question"].strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"])]
    lines.append("Answer:" + (f" {LETTERS[int(row['answer'])]}\n\n" if with_answer else ""))
    return "\n".join(lines)


def mmlu_prompt(row: dict[str, Any], shots: list[dict[str, Any]]) -> str:
    subject = row["subject"].replace("_", " ")
    header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return header + "".join(_format(s, True) for s in shots) + _format(row, False)


def load_mmlu(n_shots: int = 5, max_questions: int = 0, local_dev: str = "", local_test: str = "") -> list[Sample]:
    """Samples of MMLU's test split (all subjects, or the first ``max_questions`` rows taken
    round-robin over subjects so a small run still spans them)."""
    dev = load_rows(HUB_ID, "all", "dev", local_path=local_dev or None)
    test = load_rows(HUB_ID, "all", "test", local_path=local_test or None)
    shots: dict[str, list[dict]] = defaultdict(list)
    for row in dev:
        shots[row["subject"]].append(row)
    if max_questions and len(test) > max_questions:
        by_subject: dict[str, list[dict]] = defaultdict(list)
        for row in test:
            by_subject[row["subject"]].append(row)
        picked, round_ = [], 0
        while len(picked) < max_questions:
            for rows in by_subject.values():
                if round_ < len(rows) and len(picked) < max_questions:
                    picked.append(rows[round_])
            round_ += 1
        test = picked
    return [Sample("mmlu", "mmlu", i, 0, mmlu_prompt(row, shots[row["subject"]][:n_shots]),
                   [LETTERS[int(row["answer"])]], 2, chat=False, choices=list(LETTERS),
                   meta={"subject": row["subject"]}) for i, row in enumerate(test)]


def score_mmlu_text(prediction: str, references: list[str]) -> float:
    """1 if the first standalone option letter of a generated reply is the gold one."""
    found = re.search(r"\b([ABCD])\b", prediction)
    return float(found is not None and found.group(1) == references[0])
