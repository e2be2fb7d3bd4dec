"""Where documents come from: a corpus spec string -> documents, with bad ones reported, not fatal.

Corpus specs (the ``corpus`` parameter):

* ``austen``                   Jane Austen's six novels, offline (see :mod:`longctx.generate.austen`)
* ``path/to/folder``           every ``*.txt`` file in it (sorted), id = file stem
* ``path/to/file.jsonl``       one JSON object per line (``.json``, ``.jsonl.gz``, ``.jsonl.zst`` too;
                               zstd needs the ``zstandard`` package, a dependency)
* ``path/to/file.parquet``     one row per document
* ``hf:owner/name``            a Hugging Face ``datasets`` id, streamed; e.g. the paper's books
                               ``hf:togethercomputer/Long-Data-Collections`` with
                               ``corpus_data_files`` naming the books file and ``corpus_revision``
                               pinning the commit that still holds it

Rows use ``text_field`` for the text and ``id_field`` / ``title_field`` when present (else the
row number). A field may be a dotted path into nested objects: the books of Long-Data-Collections
keep their title under ``meta.short_book_title``; a key that itself contains a dot is matched
first as a whole. A bad document (undecodable bytes, a missing or non-string text field, empty or
whitespace-only text, an unreadable JSON line) is yielded as a :class:`Skipped` record naming the
document and the reason; the caller counts it in the manifest and carries on.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["Document", "Skipped", "iter_corpus", "field", "open_lines", "REMOVED_FROM_MAIN"]

# Hub files deleted from a data set's main branch: (dataset, file) -> the deleting commit. Reading
# one needs ``corpus_revision`` set to a commit before it (see params/paper/01_generate_qa.yaml).
REMOVED_FROM_MAIN = {("togethercomputer/Long-Data-Collections", "pretrain/book.jsonl.zst"): "613289c"}

_MISSING = object()


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
                revision: str = "", root: Path | None = None) -> Iterator[Document | Skipped]:
    """Yield every document of ``spec`` in a stable order, good ones and skipped ones.

    ``revision`` (a commit, tag or branch) applies to ``hf:`` corpora only."""
    if spec == "austen":
        from .austen import load_austen

        for doc_id, title, text in load_austen():
            yield _checked(doc_id, title, f"janeaustenr:{doc_id}", text)
        return
    if spec.startswith("hf:"):
        yield from _iter_hub(spec[3:], text_field, id_field, title_field, data_files, split, revision)
        return
    from ..core.config import resolve_path

    path = resolve_path(spec, root)
    if path.is_dir():
        yield from _iter_txt_folder(path)
    elif path.is_file() and (path.suffix in (".jsonl", ".json") or path.name.endswith((".jsonl.gz", ".jsonl.zst"))):
        yield from _iter_jsonl(path, text_field, id_field, title_field)
    elif path.is_file() and path.suffix == ".parquet":
        yield from _iter_parquet(path, text_field, id_field, title_field)
    elif not path.exists():
        raise FileNotFoundError(
            f"corpus '{spec}': {path} does not exist; expected 'austen', a folder of .txt files, "
            "a .jsonl/.parquet file or 'hf:<dataset id>'")
    else:
        raise ValueError(f"corpus '{spec}': unsupported file type {path.suffix!r}; "
                         "expected a folder of .txt files, .jsonl, .json, .jsonl.gz, .jsonl.zst or .parquet")


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


def field(row: dict, path: str, default: object = None) -> object:
    """``row[path]``, or for a dotted ``path`` such as ``meta.short_book_title`` the nested value;
    ``default`` when any step is missing or not an object. A flat key holding null does not hide
    the nested value: ``datasets`` gives every row every column of the file, null where absent."""
    if row.get(path) is not None or (path in row and "." not in path):
        return row[path]
    value: object = row
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def _row_to_doc(row: dict, index: int, source: str, text_field: str, id_field: str,
                title_field: str) -> Document | Skipped:
    if not isinstance(row, dict):
        return Skipped(str(index), source, f"row is {type(row).__name__}, expected an object")
    doc_id = str(field(row, id_field, index))
    text = field(row, text_field, _MISSING)
    if text is _MISSING:
        return Skipped(doc_id, source, f"missing text field '{text_field}' "
                                       f"(row has: {', '.join(sorted(map(str, row))) or 'nothing'})")
    title = field(row, title_field)
    return _checked(doc_id, str(title) if title else doc_id, source, text)


def open_lines(path: Path) -> io.BufferedIOBase:
    """``path`` opened for reading bytes line by line, decompressing ``.gz`` and ``.zst``."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        try:
            import zstandard
        except ImportError as err:
            raise ImportError(f"{path}: reading .zst needs the 'zstandard' package "
                              "(pip install 'zstandard>=0.22')") from err
        # read_across_frames: files written by concatenating frames (pzstd, parallel writers)
        # continue past the first frame's end instead of looking truncated.
        reader = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True,
                                                            closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)
    return open(path, "rb")


def _iter_jsonl(path: Path, text_field: str, id_field: str, title_field: str) -> Iterator[Document | Skipped]:
    with open_lines(path) as handle:
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
              split: str, revision: str) -> Iterator[Document | Skipped]:
    import datasets

    deleted = REMOVED_FROM_MAIN.get((name, data_files))
    if deleted and not revision:
        raise ValueError(f"corpus 'hf:{name}': {data_files} was deleted from the main branch in commit "
                         f"{deleted}; set corpus_revision to a commit before it (see "
                         "params/paper/01_generate_qa.yaml for how to find one)")
    kwargs = {"data_files": data_files} if data_files else {}
    if revision:
        kwargs["revision"] = revision
    try:
        rows = datasets.load_dataset(name, split=split, streaming=True, **kwargs)
    except Exception as err:  # the hub raises many types; all mean "cannot read this dataset"
        raise RuntimeError(f"corpus 'hf:{name}': could not open the dataset ({type(err).__name__}: "
                           f"{err}); is the hub reachable and the id / data_files / revision right?") from err
    at = f"@{revision}" if revision else ""
    for index, row in enumerate(rows):
        yield _row_to_doc(row, index, f"hf:{name}{at}#{index}", text_field, id_field, title_field)
