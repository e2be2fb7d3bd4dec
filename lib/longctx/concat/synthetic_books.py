"""Synthetic stage-1 output of given book lengths, for planning stage 2 at paper scale without text.

Stage 2's planner needs, per document, only chunk token ends and the token sizes and groundings
of its questions. :func:`synthetic_store` makes those for any list of lengths, with the project's
own stage-1 walk (:mod:`longctx.generate.walk`: 25 hierarchical questions over 4,096-token chunks and
12,288-token sections, 50 diverse) and question / answer sizes drawn around what a 72B generator
writes (about 30 and 90 tokens). The documents have no text; planning and the manifest counts
work on them, tokenising a sample does not. Used by ``bench/bench_concat_keep.py`` and the tests
of whole-document selection.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..core.tokenizer import load_tokenizer
from ..generate.walk import DIVERSE_TYPES, plan_diverse, plan_hierarchical
from .qa_store import QA, Document, QAStore

__all__ = ["lognormal_lengths", "synthetic_store"]


def lognormal_lengths(n: int, median: float = 100_000, sigma: float = 0.6, seed: int = 0,
                      low: int = 8_192, high: int = 1_000_000) -> np.ndarray:
    """``n`` book lengths in tokens: lognormal around ``median``, clipped to ``[low, high]``."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(median * np.exp(sigma * rng.standard_normal(n))), low, high).astype(np.int64)


def _qa(kind: str, index: int, label: str, chunk_ids, rng: np.random.Generator) -> QA:
    nq, na = max(8, int(rng.normal(30, 8))), max(10, int(rng.normal(90, 30)))
    return QA(kind, index, label, tuple(chunk_ids), "q", "a",
              np.zeros(nq, dtype=np.int32), np.zeros(na, dtype=np.int32))


def synthetic_store(lengths, *, chunk_tokens: int = 4096, chunks_per_section: int = 3,
                    n_hierarchical: int = 25, n_global: int = 2, n_diverse: int = 50,
                    seed: int = 0, tokenizer: str = "llama3") -> QAStore:
    """A :class:`QAStore` of text-free documents with the given token ``lengths``."""
    rng = np.random.default_rng(seed)
    walk_rng = random.Random(seed)
    documents = []
    for position, n_tokens in enumerate(int(x) for x in lengths):
        ends = np.minimum(np.arange(1, -(-n_tokens // chunk_tokens) + 1) * chunk_tokens, n_tokens)
        n_chunks = len(ends)
        sections = [list(range(s, min(s + chunks_per_section, n_chunks)))
                    for s in range(0, n_chunks, chunks_per_section)]
        doc = Document(position=position, line=position + 1, offset=0, id=f"book-{position:05d}",
                       title=f"Book {position}", n_tokens=n_tokens, chunk_token_ends=ends.astype(np.int64),
                       chunk_char_ends=ends.astype(np.int64) * 4,
                       chunk_ends_paragraph=np.ones(n_chunks, dtype=bool))
        steps = plan_hierarchical(n_hierarchical, n_global, sections, 0.5, 3, walk_rng)
        doc.hierarchical = [_qa("hierarchical", s.index, s.level, s.chunk_ids, rng) for s in steps]
        doc.diverse = [_qa("diverse", d.index, d.type, d.chunk_ids, rng)
                       for d in plan_diverse(n_diverse, n_chunks, DIVERSE_TYPES, walk_rng)]
        documents.append(doc)
    return QAStore(Path("<synthetic>"), load_tokenizer(tokenizer), documents, [], cache_tokens=0)
