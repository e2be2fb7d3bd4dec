"""Training samples on disk: a streaming parquet writer and the one loader every reader uses.

A stage-2 run writes one parquet file per curriculum stage (``{output_dir}/{stage}.parquet``)
next to a ``manifest.json``. Each row is one sample:

| column | type | meaning |
| --- | --- | --- |
| ``input_ids`` | list<int32> | the whole chat, template and special tokens included |
| ``label_starts``, ``label_ends`` | list<int32> | answer spans ``[start, end)``: labels equal ``input_ids`` there and are -100 elsewhere |
| metadata columns | see :data:`METADATA_SCHEMA` | document ids, QA counts by kind, token counts, fill fraction |

Labels are stored as spans because they are, by construction, either -100 or the input id
(unshifted labels: the loss shifts them). :func:`open_samples` expands them back:

    from longctx.concat.samples import open_samples
    samples = open_samples("runs/demo/02_concatenate", stage="8K")
    sample = samples[0]            # dict: input_ids, labels (int64 arrays, same length) + metadata
    samples.metadata_frame()       # pandas table of the metadata columns only (no token arrays)

The file is also a plain Hugging Face dataset (``datasets.load_dataset("parquet", ...)``), but
that view shows spans, not labels; use :func:`open_samples` to get labels.

Writing is streaming: :class:`SampleWriter` buffers at most ``group_tokens`` tokens before it
flushes a parquet row group, so memory stays bounded whatever the number of samples. The file
appears under its final name only on a clean ``close()``; a crashed run leaves a ``.partial``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "IGNORE_INDEX",
    "METADATA_SCHEMA",
    "SAMPLE_SCHEMA",
    "SampleWriter",
    "Samples",
    "open_samples",
    "labels_to_spans",
    "spans_to_labels",
]

IGNORE_INDEX = -100  # label value where no loss is taken (PyTorch cross-entropy default)

# Per-sample metadata written by stage 2. Readers may rely on these names.
METADATA_SCHEMA = pa.schema([
    ("sample_id", pa.string()),              # "{stage}-{index:06d}"
    ("stage", pa.string()),                  # curriculum stage name, e.g. "180K"
    ("target_tokens", pa.int64()),           # the stage's length budget
    ("n_tokens", pa.int64()),                # len(input_ids)
    ("fill_fraction", pa.float64()),         # n_tokens / target_tokens
    ("n_answer_tokens", pa.int64()),         # tokens with a label (answers + their <|eot_id|>)
    ("n_document_tokens", pa.int64()),       # tokens of document text
    ("doc_ids", pa.list_(pa.string())),      # documents in sample order
    ("doc_chunks_kept", pa.list_(pa.int32())),   # chunks kept per document (a prefix)
    ("doc_chunks_total", pa.list_(pa.int32())),  # chunks the document has
    ("n_hierarchical", pa.int32()),          # hierarchical QA turns
    ("n_diverse", pa.int32()),               # diverse QA turns right after their document
    ("n_revisit", pa.int32()),               # QA turns about an earlier document
    ("n_global", pa.int32()),                # hierarchical turns by level: global ...
    ("n_section", pa.int32()),               # ... section
    ("n_chunk", pa.int32()),                 # ... chunk
    ("planned_global", pa.int32()),          # questions Algorithm 2 asks of the sample's documents
    ("planned_section", pa.int32()),         #   if none were cut: all their hierarchical ones by
    ("planned_chunk", pa.int32()),           #   level, n_diverse_per_doc diverse each, n_revisit
    ("planned_diverse", pa.int32()),         #   per revisit coin drawn (compare with n_global,
    ("planned_revisit", pa.int32()),         #   n_section, n_chunk, n_diverse, n_revisit)
    ("fit", pa.string()),                    # "whole", "one_cut" or "cuts" (fallback, several cut)
    ("n_documents_cut", pa.int32()),         # documents with chunks cut away
    ("n_tokens_cut", pa.int64()),            # text tokens cut away from them
    ("n_qa_dropped_truncation", pa.int32()), # questions dropped because their chunks were cut
    ("n_qa_trimmed", pa.int32()),            # question turns dropped from the end to fit the target
    ("revisit_pairs", pa.int32()),           # (later doc, earlier doc) pairs that could revisit
    ("revisit_drawn", pa.int32()),           # pairs whose coin came up "revisit"
    ("revisit_shortfall", pa.int32()),       # revisit questions missing (earlier document exhausted)
    ("revisit_distances", pa.list_(pa.int32())),  # per revisit question: documents back (>= 1)
    ("layout", pa.string()),                 # "interleaved" or "documents_first"
])

SAMPLE_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("label_starts", pa.list_(pa.int32())),
    ("label_ends", pa.list_(pa.int32())),
    *METADATA_SCHEMA,
])

_TOKEN_COLUMNS = ("input_ids", "label_starts", "label_ends")


# --------------------------------------------------------------------------- labels <-> spans


def labels_to_spans(input_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximal ``[start, end)`` runs where ``labels != IGNORE_INDEX``.

    Raises ValueError if a label is neither -100 nor the input id at its position (such labels
    cannot be stored as spans, and stage 2 never makes them).
    """
    input_ids = np.asarray(input_ids)
    labels = np.asarray(labels)
    if input_ids.shape != labels.shape or input_ids.ndim != 1:
        raise ValueError(f"input_ids {input_ids.shape} and labels {labels.shape} must be equal 1-D")
    on = labels != IGNORE_INDEX
    wrong = on & (labels != input_ids)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise ValueError(f"label at {i} is {int(labels[i])}, neither {IGNORE_INDEX} nor the input id "
                         f"{int(input_ids[i])}; labels must be unshifted copies of input_ids")
    edges = np.diff(np.concatenate(([0], on.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1).astype(np.int32), np.flatnonzero(edges == -1).astype(np.int32)


def spans_to_labels(input_ids: np.ndarray, starts: Sequence[int], ends: Sequence[int]) -> np.ndarray:
    """Full labels: ``input_ids`` inside the spans, :data:`IGNORE_INDEX` elsewhere (int64)."""
    input_ids = np.asarray(input_ids, dtype=np.int64)
    labels = np.full_like(input_ids, IGNORE_INDEX)
    for s, e in zip(starts, ends):
        labels[s:e] = input_ids[s:e]
    return labels


# --------------------------------------------------------------------------- writer


class SampleWriter:
    """Append samples to a parquet file, one bounded row group at a time.

    ``write(input_ids, labels=..., **metadata)`` or ``write(input_ids, spans=(starts, ends),
    **metadata)``; metadata keys are those of :data:`METADATA_SCHEMA` (missing ones are null,
    unknown ones are an error). Use as a context manager; the file is renamed into place on a
    clean exit only.
    """

    def __init__(self, path: str | Path, group_tokens: int = 1 << 20):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._writer = pq.ParquetWriter(str(self._partial), SAMPLE_SCHEMA, compression="zstd")
        self.group_tokens = int(group_tokens)
        self._rows: list[dict[str, Any]] = []
        self._buffered = 0
        self.n_samples = 0
        self.n_tokens = 0

    def write(self, input_ids: Sequence[int] | np.ndarray, labels: np.ndarray | None = None, *,
              spans: tuple[Sequence[int], Sequence[int]] | None = None, **metadata: Any) -> None:
        ids = np.asarray(input_ids)
        if (labels is None) == (spans is None):
            raise ValueError("give exactly one of labels= or spans=")
        if labels is not None:
            starts, ends = labels_to_spans(ids, np.asarray(labels))
        else:
            starts = np.asarray(spans[0], dtype=np.int32)
            ends = np.asarray(spans[1], dtype=np.int32)
            if len(starts) != len(ends) or (len(starts) and (starts.min() < 0 or ends.max() > len(ids)
                                                               or (ends <= starts).any())):
                raise ValueError(f"bad label spans for a sample of {len(ids)} tokens")
        unknown = set(metadata) - set(METADATA_SCHEMA.names)
        if unknown:
            raise ValueError(f"unknown metadata key(s) {sorted(unknown)}; known: {METADATA_SCHEMA.names}")
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
            raise ValueError("input_ids must be non-negative int32 values")
        self._rows.append({"input_ids": ids.astype(np.int32, copy=False), "label_starts": starts,
                           "label_ends": ends, **metadata})
        self._buffered += len(ids)
        self.n_samples += 1
        self.n_tokens += len(ids)
        if self._buffered >= self.group_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        columns = {}
        for field in SAMPLE_SCHEMA:
            values = [row.get(field.name) for row in self._rows]
            if field.name in _TOKEN_COLUMNS:
                # Build list<int32> from one flat buffer + offsets (no per-token Python objects).
                lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
                offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
                flat = np.concatenate(values).astype(np.int32) if lengths.sum() else np.zeros(0, np.int32)
                columns[field.name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
            else:
                columns[field.name] = pa.array(values, type=field.type)
        self._writer.write_table(pa.table(columns, schema=SAMPLE_SCHEMA), row_group_size=len(self._rows))
        self._rows.clear()
        self._buffered = 0

    def close(self) -> Path:
        """Flush, close and move the file to its final name; returns that path."""
        self._flush()
        self._writer.close()
        os.replace(self._partial, self.path)
        return self.path

    def abort(self) -> None:
        """Close without publishing (the ``.partial`` file is removed)."""
        self._rows.clear()
        self._writer.close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> "SampleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- loader


class Samples(Sequence):
    """Random-access view of one parquet sample file. ``samples[i]`` is a dict with
    ``input_ids`` and ``labels`` (1-D int64 numpy arrays of equal length) plus the metadata
    columns as Python values. Reads one row group at a time (the last one is kept)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = pq.ParquetFile(str(self.path))
        missing = [c for c in _TOKEN_COLUMNS if c not in self._file.schema_arrow.names]
        if missing:
            raise ValueError(f"{self.path}: not a longctx sample file (missing columns {missing})")
        sizes = [self._file.metadata.row_group(g).num_rows for g in range(self._file.num_row_groups)]
        self._group_starts = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self._cached_group: int | None = None
        self._cached_table: pa.Table | None = None

    def __len__(self) -> int:
        return int(self._group_starts[-1])

    def _group_of(self, index: int) -> tuple[int, int]:
        group = int(np.searchsorted(self._group_starts, index, side="right") - 1)
        return group, index - int(self._group_starts[group])

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sample {index} out of range for {n} samples in {self.path}")
        index %= n
        group, row = self._group_of(index)
        if group != self._cached_group:
            self._cached_table = self._file.read_row_group(group)
            self._cached_group = group
        table = self._cached_table.slice(row, 1)
        item: dict[str, Any] = {}
        ids = _flat(table, "input_ids").astype(np.int64)
        starts = _flat(table, "label_starts")
        ends = _flat(table, "label_ends")
        item["input_ids"] = ids
        item["labels"] = spans_to_labels(ids, starts, ends)
        for name in table.column_names:
            if name not in _TOKEN_COLUMNS:
                item[name] = table.column(name).to_pylist()[0]
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def metadata_frame(self):
        """Metadata columns of every sample as a pandas DataFrame (token arrays not read)."""
        names = [n for n in self._file.schema_arrow.names if n not in _TOKEN_COLUMNS]
        return self._file.read(columns=names).to_pandas()

    def __repr__(self) -> str:
        return f"Samples({str(self.path)!r}, n={len(self)})"


def _flat(table: pa.Table, name: str) -> np.ndarray:
    """The values of list column ``name`` in a one-row table (respects slice offsets)."""
    return table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)


def open_samples(path: str | Path, stage: str | None = None) -> Samples:
    """The documented loader for stage-2 output.

    ``path`` is a sample file (``.parquet``) or a stage-2 output folder; in a folder, ``stage``
    names the file (``{stage}.parquet``) and may be left out when the folder holds one stage.
    """
    path = Path(path)
    if path.is_file():
        return Samples(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no sample file or folder here")
    if stage is not None:
        file = path / f"{stage}.parquet"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such stage; stages here: {_stages_in(path)}")
        return Samples(file)
    stages = _stages_in(path)
    if len(stages) != 1:
        raise ValueError(f"{path} holds stages {stages}; pass stage=<name>")
    return Samples(path / f"{stages[0]}.parquet")


def _stages_in(folder: Path) -> list[str]:
    manifest = folder / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        stages = data.get("stages")
        if isinstance(stages, Mapping):
            return [name for name in stages if (folder / f"{name}.parquet").is_file()]
        if isinstance(stages, list):
            return [s["name"] for s in stages if (folder / f"{s['name']}.parquet").is_file()]
    return sorted(p.stem for p in folder.glob("*.parquet"))
