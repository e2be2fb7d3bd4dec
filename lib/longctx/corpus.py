"""Where documents come from: a corpus spec string -> documents, with bad ones reported, not fatal.

Corpus specs (the ``corpus`` parameter):

* ``austen``                   Jane Austen's six novels, offline (see :mod:`longctx.austen`)
* ``path/to/folder``           every ``*.txt`` file in it (sorted), id = file stem
* ``path/to/file.jsonl``       one JSON object per line (``.json``, ``.jsonl.gz`` too)
* ``path/to/file.parquet``     one row per document
* ``hf:owner/name``            a Hugging Face ``datasets`` id, streamed; e.g. the paper's books
                               ``hf:togethercomputer/Long-Data-Collections`` with
                               ``corpus_data_files`` naming the books file

Rows use ``text_field`` for the text and ``id_field`` / ``title_field`` when present (else the
row number). A bad document (undecodable bytes, a missing or non-string text field, empty or
whitespace-only text, an unreadable JSON line) is yielded as a :class:`Skipped` record naming the
document and the reason; the caller counts it in the manifest and carries on.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["Document", "Skipped", "iter_corpus"]


@dataclass(frozen=True)
class Document:
    """One text to generate QA from."""

    id: str
    title: str
    source: str
    text: str


@dataclass(frozen=True)
class Skipped:
    """A document that cannot be used, and why."""

    id: str
    source: str
    reason: str


def iter_corpus(spec: str, *, text_field: str = "text", id_field: str = "id",
                title_field: str = "title", data_files: str = "", split: str = "train",
                root: Path | None = None) -> Iterator[Document | Skipped]:
    """Yield every document of ``spec`` in a stable order, good ones and skipped ones."""
    if spec == "austen":
        from .austen import load_austen

        for doc_id, title, text in load_austen():
            yield _checked(doc_id, title, f"janeaustenr:{doc_id}", text)
        return
    if spec.startswith("hf:"):
        yield from _iter_hub(spec[3:], text_field, id_field, title_field, data_files, split)
        return
    from .config import resolve_path

    path = resolve_path(spec, root)
    if path.is_dir():
        yield from _iter_txt_folder(path)
    elif path.is_file() and (path.suffix in (".jsonl", ".json") or path.name.endswith(".jsonl.gz")):
        yield from _iter_jsonl(path, text_field, id_field, title_field)
    elif path.is_file() and path.suffix == ".parquet":
        yield from _iter_parquet(path, text_field, id_field, title_field)
    elif not path.exists():
        raise FileNotFoundError(
            f"corpus '{spec}': {path} does not exist; expected 'austen', a folder of .txt files, "
            "a .jsonl/.parquet file or 'hf:<dataset id>'")
    else:
        raise ValueError(f"corpus '{spec}': unsupported file type {path.suffix!r}; "
                         "expected a folder of .txt files, .jsonl, .json, .jsonl.gz or .parquet")


def _checked(doc_id: str, title: str, source: str, text: object) -> Document | Skipped:
    if text is None:
        return Skipped(doc_id, source, "missing text field")
    if not isinstance(text, str):
        return Skipped(doc_id, source, f"text field is {type(text).__name__}, expected a string")
    if not text.strip():
        return Skipped(doc_id, source, "empty or whitespace-only text")
    return Document(doc_id, title or doc_id, source, text)


def _iter_txt_folder(folder: Path) -> Iterator[Document | Skipped]:
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"corpus folder {folder} holds no *.txt files")
    for path in files:
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            yield Skipped(path.stem, str(path), f"not valid UTF-8 (byte {err.start}: {err.reason})")
            continue
        yield _checked(path.stem, path.stem.replace("_", " "), str(path), text)


def _row_to_doc(row: dict, index: int, source: str, text_field: str, id_field: str,
                title_field: str) -> Document | Skipped:
    doc_id = str(row.get(id_field, index)) if isinstance(row, dict) else str(index)
    if not isinstance(row, dict):
        return Skipped(doc_id, source, f"row is {type(row).__name__}, expected an object")
    if text_field not in row:
        return Skipped(doc_id, source, f"missing text field '{text_field}' "
                                       f"(row has: {', '.join(sorted(map(str, row))) or 'nothing'})")
    title = row.get(title_field)
    return _checked(doc_id, str(title) if title else doc_id, source, row[text_field])


def _iter_jsonl(path: Path, text_field: str, id_field: str, title_field: str) -> Iterator[Document | Skipped]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            source = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                yield Skipped(f"line-{lineno}", source, f"not valid UTF-8 (byte {err.start})")
                continue
            except json.JSONDecodeError as err:
                yield Skipped(f"line-{lineno}", source, f"not valid JSON: {err.msg} at column {err.colno}")
                continue
            yield _row_to_doc(row, lineno - 1, source, text_field, id_field, title_field)


def _iter_parquet(path: Path, text_field: str, id_field: str, title_field: str) -> Iterator[Document | Skipped]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
        for row in batch.to_pylist():
            yield _row_to_doc(row, index, f"{path}#{index}", text_field, id_field, title_field)
            index += 1


def _iter_hub(name: str, text_field: str, id_field: str, title_field: str, data_files: str,
              split: str) -> Iterator[Document | Skipped]:
    import datasets

    kwargs = {"data_files": data_files} if data_files else {}
    try:
        rows = datasets.load_dataset(name, split=split, streaming=True, **kwargs)
    except Exception as err:  # the hub raises many types; all mean "cannot read this dataset"
        raise RuntimeError(f"corpus 'hf:{name}': could not open the dataset ({type(err).__name__}: "
                           f"{err}); is the hub reachable and the id / data_files right?") from err
    for index, row in enumerate(rows):
        yield _row_to_doc(row, index, f"hf:{name}#{index}", text_field, id_field, title_field)
