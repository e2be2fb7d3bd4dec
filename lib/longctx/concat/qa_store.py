"""Stage-1 output (``qa.jsonl``, see docs/CONTRACTS.md) as stage 2 reads it: validated, indexed,
every string tokenised once.

:func:`read_qa_store` streams the file once. It keeps per document only what planning needs
(chunk token ends, the QA with their token ids) plus the byte offset of its line; document text
is re-read and tokenised on demand by :meth:`QAStore.document_ids`, once per document while it
stays in a bounded cache, and checked against the record's ``n_tokens`` so that chunk token spans
index the very ids we place in a sample. A document a sample cuts is tokenised only up to its
kept chunks plus one spare chunk, checked against that chunk's recorded token end.

Errors name the file and line (``qa.jsonl:7: document 'emma': chunk 3 starts at token 812 but
chunk 2 ends at 800``). A QA whose ``chunk_ids`` name chunks the document does not have is not
an error: it is dropped, listed in :attr:`QAStore.dropped_qa` and counted in the manifest.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.tokenizer import Tokenizer, load_tokenizer

__all__ = ["QAFileError", "QA", "Document", "QAStore", "read_qa_store", "HIERARCHICAL_LEVELS"]

HIERARCHICAL_LEVELS = ("global", "section", "chunk")  # the stage-1 walk levels (docs/CONTRACTS.md)


class QAFileError(ValueError):
    """qa.jsonl does not follow the stage-1 contract; the message names file and line."""


@dataclass
class QA:
    """One question-answer pair of a document, tokenised."""

    kind: str                 # "hierarchical" or "diverse"
    index: int                # position in its stage-1 list (stage-1 order)
    label: str                # hierarchical level or diverse type
    chunk_ids: tuple[int, ...]
    question: str             # stripped
    answer: str               # stripped
    question_ids: np.ndarray  # ids of " " + question (a piece that follows the question prefix)
    answer_ids: np.ndarray    # ids of answer

    @property
    def last_chunk(self) -> int:
        """The QA survives a cut that keeps chunks ``[0, k)`` iff ``last_chunk < k``."""
        return max(self.chunk_ids)


@dataclass
class Document:
    """What stage 2 keeps of one qa.jsonl record."""

    position: int                 # 0-based index in the file
    line: int                     # 1-based line number
    offset: int                   # byte offset of the line
    id: str
    title: str
    n_tokens: int
    chunk_token_ends: np.ndarray  # int64, token_end of chunk c (exclusive)
    chunk_char_ends: np.ndarray   # int64, char_end of chunk c (exclusive)
    chunk_ends_paragraph: np.ndarray  # bool, text[:char_end of chunk c] ends with a blank line
    hierarchical: list[QA] = field(default_factory=list)
    diverse: list[QA] = field(default_factory=list)
    parent: str | None = None     # a window's book (stage 1's ``window.parent``); None for a whole document
    window: int | None = None     # its index among the book's windows

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_token_ends)


def _fail(path: Path, line: int, message: str) -> QAFileError:
    return QAFileError(f"{path}:{line}: {message}")


def _get(obj: dict, key: str, kind: type | tuple, path: Path, line: int, what: str) -> Any:
    if key not in obj:
        raise _fail(path, line, f"{what}: missing key '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(path, line, f"{what}: key '{key}' must be {names}, got {type(value).__name__}")
    return value


class QAStore:
    """All documents of a qa.jsonl, in file order, with a bounded cache of document token ids."""

    def __init__(self, path: Path, tokenizer: Tokenizer, documents: list[Document],
                 dropped_qa: list[dict[str, Any]], cache_tokens: int):
        self.path = path
        self.tokenizer = tokenizer
        self.documents = documents
        self.dropped_qa = dropped_qa
        self.cache_tokens = cache_tokens
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached = 0
        self.n_document_encodes = 0  # how many times a document text (or a prefix) was tokenised
        self.n_prefix_encodes = 0    # of which only the kept chunks (+ one spare) of a cut document

    def __len__(self) -> int:
        return len(self.documents)

    def _record(self, position: int) -> dict[str, Any]:
        doc = self.documents[position]
        with open(self.path, "rb") as f:
            f.seek(doc.offset)
            return json.loads(f.readline())

    def document_text(self, position: int) -> str:
        """The full ``text`` of document ``position`` (re-read from the file)."""
        return self._record(position)["text"]

    def prefetch(self, positions: list[int], chunks_kept: list[int] | None = None) -> None:
        """Tokenise the uncached documents among ``positions`` in one threaded batch; with
        ``chunks_kept``, only what a sample keeps of each (see :meth:`_span`)."""
        want = {}
        for i, p in enumerate(positions):
            doc = self.documents[p]
            k = doc.n_chunks if chunks_kept is None else chunks_kept[i]
            if self._cached_tokens(p) < int(doc.chunk_token_ends[k - 1]):
                want[p] = max(want.get(p, 0), k)
        if not want:
            return
        todo = list(want)
        texts = [self._span(p, want[p])[0] for p in todo]
        for p, ids in zip(todo, self.tokenizer.encode_arrays(texts)):
            self._store(p, ids, want[p])

    def _cached_tokens(self, position: int) -> int:
        ids = self._cache.get(position)
        return -1 if ids is None else len(ids)

    def _span(self, position: int, chunks_kept: int) -> tuple[str, int]:
        """Text to tokenise for the first ``chunks_kept`` chunks and the token count it must
        give: the kept chunks plus one more. Tokenising a prefix of a text gives the ids of the
        whole text's tokenisation up to the pre-token at the cut (pre-tokens are matched left
        to right with one character of look-ahead); a cut inside a pre-token (run-on text) can
        change the last ids. One spare chunk keeps such changes out of the kept span, and the
        spare chunk's recorded token end is checked."""
        doc = self.documents[position]
        text = self.document_text(position)
        if chunks_kept >= doc.n_chunks - 1:
            return text, doc.n_tokens
        return text[:int(doc.chunk_char_ends[chunks_kept])], int(doc.chunk_token_ends[chunks_kept])

    def _store(self, position: int, ids: np.ndarray, chunks_kept: int | None = None) -> None:
        doc = self.documents[position]
        self.n_document_encodes += 1
        whole = chunks_kept is None or chunks_kept >= doc.n_chunks - 1
        if not whole:
            expected = int(doc.chunk_token_ends[chunks_kept])
            if len(ids) != expected:  # the prefix did not tokenise as the record says: do it all
                self._store(position, self.tokenizer.encode_arrays([self.document_text(position)])[0])
                return
            ids = ids[:int(doc.chunk_token_ends[chunks_kept - 1])]  # drop the spare chunk
            self.n_prefix_encodes += 1
        elif len(ids) != doc.n_tokens:
            raise _fail(self.path, doc.line, f"document {doc.id!r}: text tokenises to {len(ids)} tokens "
                        f"with {self.tokenizer.name}, but the record says n_tokens={doc.n_tokens}")
        old = self._cache.pop(position, None)
        self._cached -= 0 if old is None else len(old)
        self._cache[position] = ids
        self._cached += len(ids)
        while self._cached > self.cache_tokens and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)

    def document_ids(self, position: int, upto: int | None = None) -> np.ndarray:
        """Token ids (int32) of document ``position``: the whole text, or at least its first
        ``upto`` ids (a chunk boundary) when given; tokenised once while cached."""
        doc = self.documents[position]
        need = doc.n_tokens if upto is None else upto
        if self._cached_tokens(position) >= need:
            self._cache.move_to_end(position)
            return self._cache[position]
        if upto is None or upto >= doc.n_tokens:
            self._store(position, self.tokenizer.encode_arrays([self.document_text(position)])[0])
        else:
            k = int(np.searchsorted(doc.chunk_token_ends, upto)) + 1
            text, _ = self._span(position, k)
            self._store(position, self.tokenizer.encode_arrays([text])[0], k)
        return self._cache[position]


def _read_chunks(rec: dict, path: Path, line: int, what: str, n_tokens: int, n_chars: int):
    chunks = _get(rec, "chunks", list, path, line, what)
    if not chunks:
        raise _fail(path, line, f"{what}: 'chunks' is empty")
    token_ends, char_ends = [], []
    prev_token, prev_char = 0, 0
    for c, chunk in enumerate(chunks):
        cw = f"{what}: chunk {c}"
        if not isinstance(chunk, dict):
            raise _fail(path, line, f"{cw}: expected an object, got {type(chunk).__name__}")
        values = {k: _get(chunk, k, int, path, line, cw)
                  for k in ("chunk_id", "token_start", "token_end", "char_start", "char_end")}
        if values["chunk_id"] != c:
            raise _fail(path, line, f"{cw}: chunk_id is {values['chunk_id']}, expected {c} (chunks in order)")
        if values["token_start"] != prev_token or values["char_start"] != prev_char:
            raise _fail(path, line, f"{cw}: starts at token {values['token_start']} / char "
                        f"{values['char_start']} but the previous chunk ends at token {prev_token} / "
                        f"char {prev_char} (chunks must be contiguous)")
        if values["token_end"] <= values["token_start"] or values["char_end"] <= values["char_start"]:
            raise _fail(path, line, f"{cw}: empty or reversed span")
        prev_token, prev_char = values["token_end"], values["char_end"]
        token_ends.append(prev_token)
        char_ends.append(prev_char)
    if prev_token != n_tokens or prev_char != n_chars:
        raise _fail(path, line, f"{what}: chunks end at token {prev_token} / char {prev_char}, but the "
                    f"text has {n_tokens} tokens / {n_chars} chars (chunks must cover the text)")
    return np.asarray(token_ends, dtype=np.int64), np.asarray(char_ends, dtype=np.int64)


def _read_qa_list(rec: dict, key: str, kind: str, label_key: str, path: Path, line: int, what: str,
                  n_chunks: int, dropped: list[dict[str, Any]]) -> list[tuple]:
    """Validated (index, label, chunk_ids, question, answer) tuples; bad grounding is dropped."""
    items = _get(rec, key, list, path, line, what)
    out = []
    for i, qa in enumerate(items):
        qw = f"{what}: {key}[{i}]"
        if not isinstance(qa, dict):
            raise _fail(path, line, f"{qw}: expected an object, got {type(qa).__name__}")
        question = _get(qa, "question", str, path, line, qw).strip()
        answer = _get(qa, "answer", str, path, line, qw).strip()
        chunk_ids = _get(qa, "chunk_ids", list, path, line, qw)
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in chunk_ids):
            raise _fail(path, line, f"{qw}: 'chunk_ids' must be a list of integers, got {chunk_ids!r}")
        label = qa.get(label_key)
        label = label if isinstance(label, str) else ""
        if kind == "hierarchical" and label not in HIERARCHICAL_LEVELS:
            raise _fail(path, line, f"{qw}: 'level' must be one of {list(HIERARCHICAL_LEVELS)}, got {label!r}")
        reason = None
        if not chunk_ids:
            reason = "no chunk_ids"
        elif any(c < 0 or c >= n_chunks for c in chunk_ids):
            reason = f"chunk_ids {chunk_ids} not in the document's chunks 0..{n_chunks - 1}"
        elif not question or not answer:
            reason = "empty question or answer"
        if reason:
            dropped.append({"doc_id": rec["id"], "line": line, "kind": kind, "index": i, "reason": reason})
            continue
        out.append((i, label, tuple(sorted(set(chunk_ids))), question, answer))
    return out


def _read_window(rec: dict, path: Path, line: int, what: str) -> tuple[str | None, int | None]:
    """``(parent, index)`` of a window record (``window`` written by stage 1 for a long book split
    by longctx.generate.windows), ``(None, None)`` for a whole document (and every older file)."""
    if "window" not in rec:
        return None, None
    window = _get(rec, "window", dict, path, line, what)
    parent = _get(window, "parent", str, path, line, f"{what}: field 'window'")
    index = _get(window, "index", int, path, line, f"{what}: field 'window'")
    count = _get(window, "count", int, path, line, f"{what}: field 'window'")
    if not 0 <= index < count:
        raise _fail(path, line, f"{what}: field 'window': index {index} is not in 0..{count - 1} (count {count})")
    return parent, index


def read_qa_store(path: str | Path, cache_tokens: int = 1 << 26) -> QAStore:
    """Read and validate a stage-1 qa.jsonl; tokenise every question and answer once.

    The tokenizer is the one the records name (all records must name the same one).
    ``cache_tokens`` bounds the document-id cache (default 64M tokens, 256 MiB).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: qa.jsonl not found (run stage 1, python -m longctx.generate, first)")
    documents: list[Document] = []
    dropped: list[dict[str, Any]] = []
    pending: list[tuple[Document, list[tuple], list[tuple]]] = []
    seen: dict[str, int] = {}
    tokenizer_name: str | None = None
    offset = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            line_offset, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise _fail(path, line_no, f"not valid JSON: {err}") from None
            if not isinstance(rec, dict):
                raise _fail(path, line_no, f"expected a JSON object, got {type(rec).__name__}")
            doc_id = _get(rec, "id", str, path, line_no, "record")
            what = f"document {doc_id!r}"
            if doc_id in seen:
                raise _fail(path, line_no, f"{what}: duplicate id (first on line {seen[doc_id]})")
            seen[doc_id] = line_no
            title = _get(rec, "title", str, path, line_no, what)
            text = _get(rec, "text", str, path, line_no, what)
            name = _get(rec, "tokenizer", str, path, line_no, what)
            if tokenizer_name is None:
                tokenizer_name = name
            elif name != tokenizer_name:
                raise _fail(path, line_no, f"{what}: tokenizer {name!r} differs from {tokenizer_name!r} "
                            f"of the first record (one tokenizer per file)")
            n_tokens = _get(rec, "n_tokens", int, path, line_no, what)
            token_ends, char_ends = _read_chunks(rec, path, line_no, what, n_tokens, len(text))
            hier = _read_qa_list(rec, "hierarchical_qa", "hierarchical", "level", path, line_no, what,
                                 len(token_ends), dropped)
            div = _read_qa_list(rec, "diverse_qa", "diverse", "type", path, line_no, what,
                                len(token_ends), dropped)
            doc = Document(position=len(documents), line=line_no, offset=line_offset, id=doc_id,
                           title=title.strip() or doc_id, n_tokens=n_tokens,
                           chunk_token_ends=token_ends, chunk_char_ends=char_ends,
                           chunk_ends_paragraph=np.array([text[e - 2:e] == "\n\n" for e in char_ends]))
            doc.parent, doc.window = _read_window(rec, path, line_no, what)
            documents.append(doc)
            pending.append((doc, hier, div))
    if not documents:
        raise QAFileError(f"{path}: no documents")
    tokenizer = load_tokenizer(tokenizer_name)
    # Every question and answer tokenised once, in one batch per kind.
    flat = [(doc, kind, item) for doc, hier, div in pending
            for kind, items in (("hierarchical", hier), ("diverse", div)) for item in items]
    q_ids = tokenizer.encode_batch([" " + item[3] for _, _, item in flat])
    a_ids = tokenizer.encode_batch([item[4] for _, _, item in flat])
    for (doc, kind, (index, label, chunk_ids, question, answer)), q, a in zip(flat, q_ids, a_ids):
        qa = QA(kind, index, label, chunk_ids, question, answer,
                np.asarray(q, dtype=np.int32), np.asarray(a, dtype=np.int32))
        (doc.hierarchical if kind == "hierarchical" else doc.diverse).append(qa)
    return QAStore(path, tokenizer, documents, dropped, cache_tokens)
