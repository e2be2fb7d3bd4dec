"""The one tidy results table every run appends to, and the table of the paper's reported numbers.

``{output_dir}/results.csv`` has one row per (run, model, benchmark, task, context length):

| column | meaning |
| --- | --- |
| ``run_id`` | the run that wrote the row |
| ``model`` | model label from the params |
| ``benchmark`` | ruler / infinitebench / longbench / mmlu / babilong |
| ``task`` | task id (``average`` rows are computed by readers, not stored) |
| ``context_length`` | target length in tokens; 0 = the data set's own lengths |
| ``n_samples`` | samples prepared |
| ``n_available`` | rows in the whole hub data set (empty for generated tasks) |
| ``subsample`` | empty when every row was used; else how the rows were drawn (not comparable with published scores) |
| ``n_scored`` | samples sent and scored |
| ``n_truncated`` | scored samples whose prompt was cut by the truncation policy |
| ``truncation`` | the run's truncation policy (middle / left / right / skip) |
| ``n_skipped`` | samples not evaluated (policy ``skip``, no room, request failed) |
| ``score`` | mean score x 100 over scored samples (empty when none) |
| ``metric`` | the official metric used; MMLU says how the answer was read: ``accuracy (loglikelihood)`` or ``accuracy (generate)`` |
| ``segmenter`` | how the metric split text into tokens (``jieba 0.42.1``, characters, whitespace, ...) |
| ``scorer`` | the scoring library and version where the official scorer uses one (``rouge 1.0.1``, ...) |
| ``mean_prompt_tokens`` | mean prompt + prefix tokens of the scored samples |
| ``skipped`` | empty, or why the whole row has no score ("skipped: not reachable (...)") |
| ``source`` | ``measured`` here; ``reported`` in the paper's table |
| ``note`` | free text (haystack corpus, truncation policy, ...) |
| ``input_limit`` | tokens every prompt was cut to before the model's window applied: 131072 = InfiniteBench's official 128K middle cut; empty = only the model's own window |
| ``reference`` | reported rows: where the number comes from (the paper's table / figure, or the secondary source it was read from) |

``lib/longctx/eval/data/paper_reported.csv`` has the same columns with ``source = reported``. Tables
written before a column existed are read with that column empty, and appending to one rewrites
its header first. Runs only append (several jobs may write one table); a group appended twice
(a resubmitted job, a merge run again after a kill) is read once: :func:`read_results` keeps the
last row of each :data:`ROW_KEY`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

__all__ = ["COLUMNS", "ROW_KEY", "append_rows", "read_results", "reported_path", "read_reported", "row"]

COLUMNS = ["run_id", "model", "benchmark", "task", "context_length", "n_samples", "n_available", "subsample",
           "n_scored", "n_truncated", "truncation", "n_skipped", "score", "metric", "segmenter", "scorer",
           "mean_prompt_tokens", "skipped", "source", "note", "input_limit", "reference"]
ROW_KEY = ("run_id", "model", "benchmark", "task", "context_length", "source")  # one group of one run
_NUMERIC = ("context_length", "n_samples", "n_available", "n_scored", "n_truncated", "n_skipped", "score",
            "mean_prompt_tokens", "input_limit")


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


def _upgrade(path: Path) -> None:
    """Rewrite an older table under the current header (new columns empty), atomically."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if header == COLUMNS:
            return
        unknown = [c for c in header if c not in COLUMNS]
        if unknown:
            raise ValueError(f"{path}: unknown results columns {unknown} in the header; columns: {COLUMNS}")
        old = list(reader)
    tmp = path.with_suffix(path.suffix + ".partial")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: r.get(c) or "" for c in COLUMNS} for r in old)
    tmp.replace(path)


def append_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to the CSV (header written when the file is new, upgraded when it is older)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        _upgrade(path)
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for r in rows:
            writer.writerow(row(**r))


def read_results(*paths: str | Path) -> pd.DataFrame:
    """Results tables concatenated under :data:`COLUMNS` (columns an older table lacks are
    empty); numeric columns typed, missing files ignored (callers that need one check it), one
    row per :data:`ROW_KEY` (the last written)."""
    text = {c: str for c in ("skipped", "note", "task", "subsample", "truncation", "segmenter", "scorer",
                             "reference")}
    frames = [pd.read_csv(p, dtype=text) for p in paths if Path(p).is_file()]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.concat(frames, ignore_index=True).reindex(columns=COLUMNS)
    for col in _NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    for col in ("skipped", "note", "metric", "run_id", "subsample", "truncation", "segmenter", "scorer",
                "reference", "model", "benchmark", "source"):
        df[col] = df[col].astype(object).fillna("").astype(str)
    return df.drop_duplicates(list(ROW_KEY), keep="last").reset_index(drop=True)


def reported_path() -> Path:
    """The packaged table of numbers the paper reports."""
    return Path(__file__).resolve().parent / "data" / "paper_reported.csv"


def read_reported(path: str | Path | None = None) -> pd.DataFrame:
    return read_results(path or reported_path())
