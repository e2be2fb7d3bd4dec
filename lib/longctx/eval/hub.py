"""Hub datasets through ``datasets``, or a clear "skipped: not reachable" when they are not.

Real benchmark data (SQuAD, HotpotQA, InfiniteBench, LongBench, MMLU) lives on the Hugging Face
hub. :func:`load_rows` loads a split through ``datasets`` -- from the hub, from the local
``datasets`` cache, or from a local file with the same columns (``.json``/``.jsonl``/
``.parquet``, read with ``datasets`` as well, so the same code path is exercised offline).
When none of those work it raises :class:`Unavailable` whose message is the reason that goes
into the results table and the log. :func:`load_subset` reads a benchmark's whole split by
default (published LongBench / InfiniteBench numbers are over every row); asked for fewer rows it
draws a seeded random subset and says so, for the results table. The hub is probed once per process with a short TCP
connect, so an offline machine does not wait through ``datasets``' retries per dataset.
"""

from __future__ import annotations

import functools
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["Unavailable", "Subset", "hub_reachable", "load_rows", "load_subset"]


class Unavailable(RuntimeError):
    """A data set cannot be loaded; ``str(err)`` is the reported reason."""


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """(reachable, detail) for the hub endpoint (``HF_ENDPOINT`` or huggingface.co)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False, "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, host
    except OSError as err:
        return False, f"{host}: {err.strerror or err}"


def _open(dataset: str, config: str | None, split: str, local_path: str | Path | None):
    import datasets

    if local_path:
        path = Path(local_path)
        if not path.exists():
            raise Unavailable(f"skipped: local file {path} not found")
        kind = "parquet" if path.suffix == ".parquet" else "json"
        try:
            return datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as err:  # a malformed file: name it, not a datasets traceback mid-run
            raise Unavailable(f"skipped: cannot read local file {path} as {dataset} rows "
                              f"({type(err).__name__}: {str(err)[:160]})") from err
    ok, detail = hub_reachable()
    if not ok:
        raise Unavailable(f"skipped: not reachable ({dataset}: {detail})")
    try:
        return datasets.load_dataset(dataset, config, split=split)
    except Exception as err:  # datasets raises many types; all mean "cannot load this"
        raise Unavailable(f"skipped: not reachable ({dataset}/{config or ''}/{split}: "
                          f"{type(err).__name__}: {str(err)[:160]})") from err


def load_rows(dataset: str, config: str | None = None, split: str = "test",
              local_path: str | Path | None = None, limit: int = 0) -> list[dict[str, Any]]:
    """Rows of ``dataset``/``config``/``split`` as dicts (the first ``limit`` when > 0)."""
    ds = _open(dataset, config, split, local_path)
    if limit and len(ds) > limit:
        ds = ds.select(range(limit))
    return [dict(row) for row in ds]


@dataclass
class Subset:
    rows: list[dict[str, Any]]  # the rows to evaluate, in the data set's order
    n_available: int            # rows in the whole split
    note: str                   # "" for the whole split, else how the rows were drawn


def load_subset(dataset: str, config: str | None = None, split: str = "test",
                local_path: str | Path | None = None, max_rows: int = 0, seed: int = 0) -> Subset:
    """The whole split (``max_rows`` = 0 or at least its size), or ``max_rows`` rows drawn at
    random with ``seed`` (the same rows every run), kept in the split's order. A random draw,
    not the first rows: benchmark files are often sorted (by length, by source), so a prefix
    would be a biased estimate of the full-set score."""
    ds = _open(dataset, config, split, local_path)
    total = len(ds)
    if not max_rows or max_rows >= total:
        return Subset([dict(row) for row in ds], total, "")
    picked = sorted(random.Random(f"{dataset}/{config}/{split}/{seed}").sample(range(total), max_rows))
    return Subset([dict(row) for row in ds.select(picked)], total,
                  f"subsample: {max_rows} of {total} rows, random (seed {seed})")
