"""Split a document into small chunks grouped into sections, by exact token budgets.

The whole document is tokenised once; every chunk is a span ``[token_start, token_end)`` of that
tokenisation, so spans are exact and later stages can slice the same ids. A chunk never exceeds
``small_chunk_tokens``; it ends at the last paragraph start that fits, else at the last sentence
end, else (a single run-on sentence longer than the budget) at the last whole character. A
boundary is only taken if the chunk is at least ``min_fill`` of the budget, so a stray short
paragraph near the start does not produce a sliver. Sections group consecutive chunks up to
``medium_chunk_tokens``: section boundaries are chunk boundaries.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from ..core.tokenizer import Tokenizer

__all__ = ["Chunk", "Section", "Chunking", "chunk_document"]

_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n\s*")          # a paragraph starts at m.end()
_LINE = re.compile(r"\n\s*")                               # a line starts at m.end()
_SENTENCE = re.compile(r"[.!?;:][\"'\u201d\u2019)\]_*]*(?=\s)")  # next sentence's token starts at m.end()


@dataclass(frozen=True)
class Chunk:
    chunk_id: int
    section_id: int
    token_start: int
    token_end: int
    char_start: int
    char_end: int

    @property
    def n_tokens(self) -> int:
        return self.token_end - self.token_start


@dataclass(frozen=True)
class Section:
    section_id: int
    chunk_ids: list[int]
    token_start: int
    token_end: int
    char_start: int
    char_end: int

    @property
    def n_tokens(self) -> int:
        return self.token_end - self.token_start


@dataclass
class Chunking:
    """A document's tokenisation and its chunk / section spans."""

    token_ids: list[int]
    chunks: list[Chunk]
    sections: list[Section]

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def chunk_text(self, text: str, chunk_id: int) -> str:
        c = self.chunks[chunk_id]
        return text[c.char_start:c.char_end]

    def section_text(self, text: str, section_id: int) -> str:
        s = self.sections[section_id]
        return text[s.char_start:s.char_end]

    def spans(self) -> dict[str, list[dict]]:
        """Plain-data spans for the stage-1 record."""
        return {"chunks": [asdict(c) for c in self.chunks],
                "sections": [asdict(s) for s in self.sections]}


def _token_starts_at(positions: list[int], starts: np.ndarray) -> np.ndarray:
    """Token indices whose first character is exactly at one of ``positions``."""
    if not positions:
        return np.zeros(0, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.int64)
    idx = np.searchsorted(starts, pos)
    ok = idx < len(starts)
    idx, pos = idx[ok], pos[ok]
    return np.unique(idx[starts[idx] == pos])


def _last_at_most(candidates: np.ndarray, lo: int, hi: int) -> int | None:
    """Largest candidate in ``[lo, hi]`` or None."""
    i = np.searchsorted(candidates, hi, side="right") - 1
    if i >= 0 and candidates[i] >= lo:
        return int(candidates[i])
    return None


def chunk_document(text: str, tokenizer: Tokenizer, small_chunk_tokens: int,
                   medium_chunk_tokens: int, min_fill: float = 0.5) -> Chunking:
    """Tokenise ``text`` once and cut it into chunks and sections (see module docstring)."""
    if small_chunk_tokens <= 0 or medium_chunk_tokens < small_chunk_tokens:
        raise ValueError(f"need 0 < small_chunk_tokens ({small_chunk_tokens}) <= "
                         f"medium_chunk_tokens ({medium_chunk_tokens})")
    ids, starts = tokenizer.encode_with_offsets(text)
    starts = np.asarray(starts, dtype=np.int64)
    n = len(ids)
    paragraphs = _token_starts_at([m.end() for m in _PARAGRAPH.finditer(text)], starts)
    sentences = np.union1d(
        _token_starts_at([m.end() for m in _SENTENCE.finditer(text)], starts),
        _token_starts_at([m.end() for m in _LINE.finditer(text)], starts))
    # Any token that starts a new character (not the middle of a multi-byte one) can end a chunk.
    whole_chars = np.flatnonzero(np.diff(starts, prepend=-1) > 0) if n else np.zeros(0, np.int64)

    bounds = [0]
    while bounds[-1] < n:
        s = bounds[-1]
        limit = s + small_chunk_tokens
        if limit >= n:
            bounds.append(n)
            break
        floor = s + max(1, int(min_fill * small_chunk_tokens))
        end = (_last_at_most(paragraphs, floor, limit) or _last_at_most(sentences, floor, limit)
               or _last_at_most(sentences, s + 1, limit) or _last_at_most(whole_chars, s + 1, limit)
               or limit)
        bounds.append(end)

    char_of = lambda t: int(starts[t]) if t < n else len(text)  # noqa: E731
    chunks: list[Chunk] = []
    sections: list[Section] = []
    current: list[tuple[int, int]] = []

    def close_section() -> None:
        sid = len(sections)
        first, last = current[0][0], current[-1][1]
        cids = list(range(len(chunks), len(chunks) + len(current)))
        for cid, (a, b) in zip(cids, current):
            chunks.append(Chunk(cid, sid, a, b, char_of(a), char_of(b)))
        sections.append(Section(sid, cids, first, last, char_of(first), char_of(last)))
        current.clear()

    for a, b in zip(bounds[:-1], bounds[1:]):
        if current and b - current[0][0] > medium_chunk_tokens:
            close_section()
        current.append((a, b))
    if current:
        close_section()
    return Chunking(ids, chunks, sections)
