"""Which questions to ask about a document, decided before any model call (pure, seeded).

Hierarchical walk (our reading of the paper's Algorithm 1; the exact walk is not published):

1. ``n_global`` questions about the whole document (global summary + section summaries); each
   one after the first is a follow-up of the one before, at most ``max_follow_ups`` in a row.
2. The remaining budget is spread over ``min(sections, remaining // questions_per_section)``
   *visits*: evenly spaced sections in document order (first and last always), so the questions
   span the whole book; the budget is split evenly between visits.
3. A visit opens with a section-level question (section + chunk summaries) and descends to
   chunk-level questions (chunk text). Each further step *exploits* (with
   ``follow_up_probability``: a follow-up on the chunk just asked about, at most
   ``max_follow_ups`` in a row) or *explores* (moves on to a new chunk of the section). A visit
   with more stops than its section has chunks goes back up: a new section question opens a
   second pass over the chunks. No step is ever a forced follow-up.
4. Which chunks a pass stops at: ``m`` stops among ``n`` chunks are a systematic sample with a
   random phase (stop ``i`` at ``floor((i + u) * n / m)``), so stops are distinct, in document
   order, evenly spread, and every chunk position is equally likely (a visit with one stop is
   as likely to land on a section's last chunk as on its first).

Diverse questions: each draws a type uniformly from ``types``; ``multi_hop`` draws 2-4 distinct
chunks (sorted, so the passages read in document order), every other type one chunk.
``hierarchical_aware`` (our reading of the paper's "hierarchical-aware" type) asks about one
chunk while showing the generator that chunk's section summary and the global summary.

Every planned question records its grounding ``chunk_ids``: global -> all chunks, section -> the
section's chunks, chunk -> that chunk. Stage 2 drops a question when any of them is cut away.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

__all__ = ["HierStep", "DiverseItem", "plan_hierarchical", "plan_diverse", "DIVERSE_TYPES",
           "SUMMARY_TYPES"]

DIVERSE_TYPES = ("temporal", "thematic", "character", "local_detail", "cause_effect", "multi_hop",
                 "hierarchical_aware")
SUMMARY_TYPES = frozenset({"hierarchical_aware"})  # diverse types whose prompt shows summaries


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


def _stops(n_chunks: int, m: int, rng: random.Random) -> list[int]:
    """``m <= n_chunks`` distinct positions, a systematic sample with a random phase."""
    u = rng.random()
    return [math.floor((i + u) * n_chunks / m) for i in range(m)]


def _visit(chunks: Sequence[int], budget: int, p: float, max_follow_ups: int,
           rng: random.Random) -> list[tuple[str, int | None, bool]]:
    """One visit of ``budget`` steps as (level, chunk id or None, follow_up)."""
    # First the shape: which steps are section questions, new chunk stops or follow-ups.
    kinds: list[str] = ["section"]
    chain, stops_in_pass = 0, 0
    for _ in range(budget - 1):
        if kinds[-1] == "section":
            kind = "stop"
        elif chain < max_follow_ups and rng.random() < p:
            kind = "follow"
        elif stops_in_pass < len(chunks):
            kind = "stop"
        else:
            kind = "section"  # every chunk of this pass asked: go back up for a new pass
        stops_in_pass = 0 if kind == "section" else stops_in_pass + (kind == "stop")
        chain = chain + 1 if kind == "follow" else 0
        kinds.append(kind)
    # Then the places: each pass's stops spread over the section's chunks.
    out: list[tuple[str, int | None, bool]] = []
    positions: list[int] = []
    for i, kind in enumerate(kinds):
        if kind == "section":
            m = 0
            for later in kinds[i + 1:]:
                if later == "section":
                    break
                m += later == "stop"
            positions = _stops(len(chunks), m, rng) if m else []
            out.append(("section", None, False))
        elif kind == "stop":
            out.append(("chunk", chunks[positions.pop(0)], False))
        else:
            out.append(("chunk", out[-1][1], True))
    return out


def plan_hierarchical(n_questions: int, n_global: int, sections: Sequence[Sequence[int]],
                      follow_up_probability: float, questions_per_section: int,
                      rng: random.Random, max_follow_ups: int = 2) -> list[HierStep]:
    """The ordered walk of ``n_questions`` steps over ``sections`` (lists of chunk ids)."""
    all_chunks = tuple(c for s in sections for c in s)
    steps: list[HierStep] = []
    n_global = min(n_global, n_questions)
    for i in range(n_global):
        follow_up = i % (max_follow_ups + 1) != 0  # a new global question after each full chain
        steps.append(HierStep(len(steps), "global", None, all_chunks, follow_up))
    remaining = n_questions - n_global
    if remaining <= 0 or not sections:
        return steps
    visit = _evenly_spaced(len(sections), max(1, min(len(sections), remaining // questions_per_section)))
    budgets = [remaining // len(visit) + (1 if i < remaining % len(visit) else 0) for i in range(len(visit))]
    for section_id, budget in zip(visit, budgets):
        chunks = list(sections[section_id])
        for level, chunk, follow_up in _visit(chunks, budget, follow_up_probability, max_follow_ups, rng):
            grounding = tuple(chunks) if level == "section" else (chunk,)
            steps.append(HierStep(len(steps), level, section_id, grounding, follow_up))
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
