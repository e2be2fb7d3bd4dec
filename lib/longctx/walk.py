"""Which questions to ask about a document, decided before any model call (pure, seeded).

Hierarchical walk (our reading of the paper's Algorithm 1; the exact walk is not published):

1. ``n_global`` questions about the whole document (global summary + section summaries); every
   one after the first is a follow-up of the one before.
2. The remaining budget visits sections in document order. With fewer questions than
   ``questions_per_section`` x sections, the walk visits evenly spaced sections so it still
   spans the whole document. Per visited section: one section-level question (section and chunk
   summaries), then chunk-level questions (chunk text) starting at the section's first chunk.
   Each further step either *exploits* (with ``follow_up_probability``: a follow-up that goes
   deeper on the chunk just asked about) or *explores* (moves to the next chunk of the section).

Diverse questions: each draws a type uniformly from ``types``; ``multi_hop`` draws 2-4 distinct
chunks (sorted, so the passages read in document order), every other type one chunk.

Every planned question records its grounding ``chunk_ids``: global -> all chunks, section -> the
section's chunks, chunk -> that chunk. Stage 2 drops a question when any of them is cut away.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

__all__ = ["HierStep", "DiverseItem", "plan_hierarchical", "plan_diverse", "DIVERSE_TYPES"]

DIVERSE_TYPES = ("temporal", "thematic", "character", "local_detail", "cause_effect", "multi_hop")


@dataclass(frozen=True)
class HierStep:
    index: int                 # position in the walk (0-based)
    level: str                 # "global" | "section" | "chunk"
    section_id: int | None
    chunk_ids: tuple[int, ...]
    follow_up: bool            # deeper on the same part as the step before


@dataclass(frozen=True)
class DiverseItem:
    index: int
    type: str
    chunk_ids: tuple[int, ...]


def _evenly_spaced(n_items: int, k: int) -> list[int]:
    if k >= n_items:
        return list(range(n_items))
    if k == 1:
        return [0]
    return sorted({round(i * (n_items - 1) / (k - 1)) for i in range(k)})


def plan_hierarchical(n_questions: int, n_global: int, sections: Sequence[Sequence[int]],
                      follow_up_probability: float, questions_per_section: int,
                      rng: random.Random) -> list[HierStep]:
    """The ordered walk of ``n_questions`` steps over ``sections`` (lists of chunk ids)."""
    all_chunks = tuple(c for s in sections for c in s)
    steps: list[HierStep] = []
    n_global = min(n_global, n_questions)
    for i in range(n_global):
        steps.append(HierStep(len(steps), "global", None, all_chunks, follow_up=i > 0))
    remaining = n_questions - n_global
    if remaining <= 0 or not sections:
        return steps
    visit = _evenly_spaced(len(sections), max(1, min(len(sections), remaining // max(1, questions_per_section))))
    budgets = [remaining // len(visit) + (1 if i < remaining % len(visit) else 0) for i in range(len(visit))]
    for section_id, budget in zip(visit, budgets):
        chunks = list(sections[section_id])
        steps.append(HierStep(len(steps), "section", section_id, tuple(chunks), follow_up=False))
        pointer = 0
        for j in range(budget - 1):
            if j == 0:  # descend from the section to its first chunk
                follow_up = False
            elif rng.random() < follow_up_probability or pointer + 1 >= len(chunks):
                follow_up = True
            else:
                pointer += 1
                follow_up = False
            steps.append(HierStep(len(steps), "chunk", section_id, (chunks[pointer],), follow_up))
    return steps


def plan_diverse(n_questions: int, n_chunks: int, types: Sequence[str], rng: random.Random,
                 multi_hop_chunks: tuple[int, int] = (2, 4)) -> list[DiverseItem]:
    """``n_questions`` (type, chunks) draws; multi-hop is skipped for one-chunk documents."""
    usable = [t for t in types if t != "multi_hop" or n_chunks >= 2]
    if not usable:
        raise ValueError(f"no usable diverse question type among {list(types)} for a "
                         f"{n_chunks}-chunk document")
    items = []
    for index in range(n_questions):
        kind = rng.choice(usable)
        if kind == "multi_hop":
            k = rng.randint(multi_hop_chunks[0], min(multi_hop_chunks[1], n_chunks))
            chunk_ids = tuple(sorted(rng.sample(range(n_chunks), k)))
        else:
            chunk_ids = (rng.randrange(n_chunks),)
        items.append(DiverseItem(index, kind, chunk_ids))
    return items
