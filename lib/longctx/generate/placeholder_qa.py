"""Contract-exact stage-1 records without a language model: the cheap twin of stage 1 for stage 2.

:func:`placeholder_record` turns a real text into a ``qa.jsonl`` record (docs/CONTRACTS.md) with
exact chunk and section spans from the real tokenizer, and deterministic, obviously fabricated
questions and answers (answers quote the grounding chunks' words). Stage 2 only needs the layout
of QA, not their quality, so tests, the benchmark and smoke runs of stage 2 (``longctx.concat``) use
this instead of running stage 1. Nothing here is training data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.tokenizer import Tokenizer, load_tokenizer

__all__ = ["DIVERSE_TYPES", "placeholder_record", "write_placeholder_qa"]

DIVERSE_TYPES = ("temporal", "thematic", "character", "local_detail", "cause_effect", "multi_hop")


def _chunk_bounds(text: str, offsets: np.ndarray, n_tokens: int, chunk_tokens: int) -> list[int]:
    """Token ends of chunks of at most ``chunk_tokens``, preferring to end before a paragraph."""
    ends, start = [], 0
    while start < n_tokens:
        end = min(start + chunk_tokens, n_tokens)
        if end < n_tokens:
            for t in range(end, start + chunk_tokens // 2, -1):
                if text[max(0, offsets[t] - 2):offsets[t]] == "\n\n":
                    end = t
                    break
        ends.append(end)
        start = end
    return ends


def _words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def placeholder_record(doc_id: str, title: str, text: str, *, tokenizer: Tokenizer | None = None,
                       chunk_tokens: int = 512, chunks_per_section: int = 3, n_hierarchical: int = 25,
                       n_diverse: int = 50, seed: int = 0, source: str = "") -> dict[str, Any]:
    """One qa.jsonl record for ``text`` with fabricated QA (see the module docstring)."""
    tok = tokenizer or load_tokenizer("llama3")
    ids, offsets = tok.encode_with_offsets(text)
    n_tokens = len(ids)
    token_ends = _chunk_bounds(text, offsets, n_tokens, chunk_tokens)
    token_starts = [0] + token_ends[:-1]
    char_starts = [int(offsets[t]) for t in token_starts]
    char_ends = char_starts[1:] + [len(text)]
    chunks = [{"chunk_id": c, "section_id": c // chunks_per_section, "token_start": s, "token_end": e,
               "char_start": cs, "char_end": ce}
              for c, (s, e, cs, ce) in enumerate(zip(token_starts, token_ends, char_starts, char_ends))]
    n_chunks = len(chunks)
    sections = []
    for sid in range((n_chunks + chunks_per_section - 1) // chunks_per_section):
        members = [c for c in chunks if c["section_id"] == sid]
        sections.append({"section_id": sid, "chunk_ids": [c["chunk_id"] for c in members],
                         "token_start": members[0]["token_start"], "token_end": members[-1]["token_end"],
                         "char_start": members[0]["char_start"], "char_end": members[-1]["char_end"]})
    chunk_text = [text[c["char_start"]:c["char_end"]] for c in chunks]
    rng = np.random.default_rng([seed, sum(doc_id.encode())])

    def answer_from(chunk_ids: list[int]) -> str:
        n = int(rng.integers(6, 40))
        return " / ".join(_words(chunk_text[c], max(3, n // len(chunk_ids))) for c in chunk_ids)

    # Walk global -> section -> chunk (with follow-ups), as stage 1 does; cycle if the text is short.
    walk: list[tuple[str, int | None, list[int], bool]] = [("global", None, list(range(n_chunks)), False)]
    for sec in sections:
        walk.append(("section", sec["section_id"], sec["chunk_ids"], False))
        for c in sec["chunk_ids"]:
            walk += [("chunk", sec["section_id"], [c], False), ("chunk", sec["section_id"], [c], True)]
    hierarchical = []
    for i in range(n_hierarchical):
        level, section_id, chunk_ids, follow_up = walk[i % len(walk)]
        where = {"global": f"the whole of {title}", "section": f"section {section_id} of {title}",
                 "chunk": f"chunk {chunk_ids[0]} of {title}"}[level]
        hierarchical.append({"index": i, "level": level, "section_id": section_id, "chunk_ids": chunk_ids,
                             "follow_up": follow_up or i >= len(walk),
                             "question": f"[placeholder h{i}] What happens in {where}?",
                             "answer": answer_from(chunk_ids[:3])})
    diverse = []
    for i in range(n_diverse):
        kind = DIVERSE_TYPES[i % len(DIVERSE_TYPES)]
        if kind == "multi_hop" and n_chunks >= 2:
            picked = sorted(rng.choice(n_chunks, size=int(rng.integers(2, min(4, n_chunks) + 1)), replace=False))
            chunk_ids = [int(c) for c in picked]
        else:
            chunk_ids = [int(rng.integers(n_chunks))]
        diverse.append({"index": i, "type": kind, "chunk_ids": chunk_ids,
                        "question": f"[placeholder d{i} {kind}] What does {title} say in chunks {chunk_ids}?",
                        "answer": answer_from(chunk_ids)})
    return {
        "id": doc_id, "source": source or f"placeholder:{doc_id}", "title": title, "text": text,
        "tokenizer": tok.name, "n_tokens": n_tokens, "chunks": chunks, "sections": sections,
        "summaries": {"global": f"[placeholder] summary of {title}",
                      "sections": [f"[placeholder] section {s['section_id']}" for s in sections],
                      "chunks": [f"[placeholder] chunk {c['chunk_id']}" for c in chunks]},
        "hierarchical_qa": hierarchical, "diverse_qa": diverse,
    }


def write_placeholder_qa(path: str | Path, documents: Iterable[tuple[str, str, str]], **kwargs: Any) -> Path:
    """Write a qa.jsonl of :func:`placeholder_record` s for ``(id, title, text)`` documents."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for doc_id, title, text in documents:
            f.write(json.dumps(placeholder_record(doc_id, title, text, **kwargs), ensure_ascii=False) + "\n")
    return path
