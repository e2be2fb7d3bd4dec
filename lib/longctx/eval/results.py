"""The one tidy results table every run appends to, and the table of the paper's reported numbers.

``{output_dir}/results.csv`` has one row per (run, model, benchmark, task, context length):

| column | meaning |
| --- | --- |
| ``run_id`` | the run that wrote the row |
| ``model`` | model label from the params |
| ``benchmark`` | ruler / infinitebench / longbench / mmlu |
| ``task`` | task id (``average`` rows are computed by readers, not stored) |
| ``context_length`` | target length in tokens; 0 = the data set's own lengths |
| ``n_samples`` | samples prepared |
| ``n_scored`` | samples sent and scored |
| ``n_truncated`` | scored samples whose prompt was cut by the truncation policy |
| ``n_skipped`` | samples not evaluated (policy ``skip``, no room, request failed) |
| ``score`` | mean score x 100 over scored samples (empty when none) |
| ``metric`` | the official metric used |
| ``mean_prompt_tokens`` | mean prompt + prefix tokens of the scored samples |
| ``skipped`` | empty, or why the whole row has no score ("skipped: not reachable (...)") |
| ``source`` | ``measured`` here; ``reported`` in the paper's table |
| ``note`` | free text (haystack corpus, truncation policy, ...) |

``lib/longctx/data/paper_reported.csv`` has the same columns with ``source = reported``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

__all__ = ["COLUMNS", "append_rows", "read_results", "reported_path", "read_reported", "row"]

COLUMNS = ["run_id", "model", "benchmark", "task", "context_length", "n_samples", "n_scored",
           "n_truncated", "n_skipped", "score", "metric", "mean_prompt_tokens", "skipped", "source", "note"]


def row(**values: Any) -> dict[str, Any]:
    """A results row with every column present (missing ones empty)."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise KeyError(f"unknown results columns {sorted(unknown)}; columns: {COLUMNS}")
    out = {c: "" for c in COLUMNS}
    out.update(values)
    out.setdefault("source", "measured")
    if out["source"] == "":
        out["source"] = "measured"
    return out


def append_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to the CSV (header written when the file is new)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for r in rows:
            writer.writerow(row(**r))


def read_results(*paths: str | Path) -> pd.DataFrame:
    """Results tables concatenated; numeric columns typed, missing files ignored."""
    frames = [pd.read_csv(p, dtype={"skipped": str, "note": str, "task": str}) for p in paths if Path(p).is_file()]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    for col in ("context_length", "n_samples", "n_scored", "n_truncated", "n_skipped", "score", "mean_prompt_tokens"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    for col in ("skipped", "note", "metric", "run_id"):
        df[col] = df[col].fillna("").astype(str)
    return df


def reported_path() -> Path:
    """The packaged table of numbers the paper reports."""
    return Path(__file__).resolve().parent.parent / "data" / "paper_reported.csv"


def read_reported(path: str | Path | None = None) -> pd.DataFrame:
    return read_results(path or reported_path())
