"""Which questions to ask about a document, decided before any model call (pure, seeded).

Hierarchical walk (our reading of the paper's Algorithm 1; the exact walk is not published):

1. ``n_global`` questions about the whole document (global summary + section summaries); each
   one after the first is a follow-up of the one before, at most ``max_follow_ups`` in a row.
2. The remaining budget goes to ``min(sections, remaining // questions_per_section)`` *visits*:
   a systematic sample of the sections with a random phase (evenly spread over the whole book,
   in document order, every section equally likely), each visit spending the remaining budget
   over the remaining visits *on average* (the last one spends what is left; every later visit
   keeps one question in reserve).
3. A visit opens with a section-level question and may descend to chunk-level questions (chunk
   text). After a chunk question the walk *exploits* (with ``follow_up_probability``: a follow-up
   on the chunk just asked about, at most ``max_follow_ups`` in a row) or *explores*: a new chunk
   of the section, or on to the next section. Exploring (and descending) stays in the section with
   probability (share left) / (expected cost of a chunk stop with its follow-ups), so the budget,
   not a fixed number of steps per visit, ends a visit: follow-ups keep their probability at
   every length (on long books some visits are a section question alone). A visit with more
   stops than its section has chunks goes back up: a new section question opens a second pass.
   No step is ever a forced follow-up.
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
from typing import Iterable, Sequence

__all__ = ["HierStep", "DiverseItem", "plan_hierarchical", "plan_diverse", "alternatives", "coverage", "DIVERSE_TYPES",
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


def _stops(n_chunks: int, m: int, rng: random.Random) -> list[int]:
    """``m <= n_chunks`` distinct positions, a systematic sample with a random phase."""
    u = rng.random()
    return [math.floor((i + u) * n_chunks / m) for i in range(m)]


def _stop_cost(p: float, max_follow_ups: int) -> float:
    """Expected questions one chunk stop costs: the stop and its run of follow-ups."""
    return sum(p ** k for k in range(max_follow_ups + 1))


def _visit_shape(n_chunks: int, most: int, share: float, p: float, max_follow_ups: int, last: bool,
                 rng: random.Random) -> list[str]:
    """The kinds of one visit's steps ("section", "stop", "follow"), at most ``most`` of them.

    After a chunk question the walk exploits (a follow-up, with ``p``, at most ``max_follow_ups``
    in a row) or explores. Exploring (and descending from a section question) goes to a new chunk
    of this section with probability ``(share - spent) / stop_cost`` (so a visit spends ``share``
    questions on average) or leaves the section; the last visit spends whatever is left.
    """
    cost = _stop_cost(p, max_follow_ups)
    kinds, chain, stops_in_pass = ["section"], 0, 0
    while len(kinds) < most:
        if kinds[-1] != "section" and chain < max_follow_ups and rng.random() < p:
            kind = "follow"
        elif kinds[-1] == "section" and len(kinds) > 1:
            kind = "stop"  # a second pass's section question opens it
        else:
            room = 1.0 if last else (share - len(kinds)) / cost
            if rng.random() >= room:
                break  # move on to the next section
            if stops_in_pass < n_chunks:
                kind = "stop"
            elif most - len(kinds) >= 2 or last:
                kind = "section"  # every chunk of this pass asked: go back up for a new pass
            else:
                break
        stops_in_pass = 0 if kind == "section" else stops_in_pass + (kind == "stop")
        chain = chain + 1 if kind == "follow" else 0
        kinds.append(kind)
    return kinds


def _place(chunks: Sequence[int], kinds: list[str], rng: random.Random) -> list[tuple[str, int | None, bool]]:
    """A visit's kinds as (level, chunk id or None, follow_up): each pass's stops spread over the
    section's chunks."""
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
    budget = n_questions - n_global
    if budget <= 0 or not sections:
        return steps
    n_visits = max(1, min(len(sections), budget // questions_per_section))
    phase = rng.random()  # a systematic sample of sections: evenly spread, each equally likely
    visits = [math.floor((j + phase) * len(sections) / n_visits) for j in range(n_visits)]
    for j, section_id in enumerate(visits):
        later = n_visits - j - 1  # each later visit keeps one question in reserve
        chunks = list(sections[section_id])
        kinds = _visit_shape(len(chunks), budget - later, budget / (later + 1), follow_up_probability,
                             max_follow_ups, later == 0, rng)
        budget -= len(kinds)
        for level, chunk, follow_up in _place(chunks, kinds, rng):
            grounding = tuple(chunks) if level == "section" else (chunk,)
            steps.append(HierStep(len(steps), level, section_id, grounding, follow_up))
    return steps


def alternatives(step: HierStep, sections: Sequence[Sequence[int]], planned: Iterable[HierStep]) -> list[HierStep]:
    """Where a step that keeps failing moves on to (a contents page, an index, a follow-up that
    keeps coming back as a duplicate), best first: another chunk (for a chunk step) or section
    (for a section step) that no step of the walk plans to ask about, nearest first (later
    before earlier at the same distance), then the planned ones. A global step has none.
    Each alternative is a new question (``follow_up`` false) under the same walk index.
    """
    if step.level == "global":
        return []
    planned = list(planned)
    if step.level == "section":
        asked = {s.section_id for s in planned if s.level == "section"}
        order = sorted((i for i in range(len(sections)) if i != step.section_id),
                       key=lambda i: (i in asked, abs(i - step.section_id), i < step.section_id))
        return [HierStep(step.index, "section", i, tuple(sections[i]), False) for i in order]
    here = step.chunk_ids[0]
    section_of = {c: i for i, s in enumerate(sections) for c in s}
    asked = {s.chunk_ids[0] for s in planned if s.level == "chunk"}
    order = sorted((c for c in section_of if c != here),
                   key=lambda c: (c in asked, abs(c - here), c < here))
    return [HierStep(step.index, "chunk", section_of[c], (c,), False) for c in order]


def coverage(sections: Sequence[Sequence[int]], asked: Iterable[tuple[str, int | None, Sequence[int]]]
             ) -> dict[str, float]:
    """How a walk's questions spread over a document: ``asked`` holds (level, section_id, chunk_ids).

    ``sections`` / ``chunks``: share of sections with a section or chunk question, and of chunks
    with a chunk question. ``largest_gap``: the longest run of chunks inside no asked section or
    chunk (the document's start and end included), over the even spacing ``chunks / sections
    asked``: at most 1 when the asked sections are evenly spread, whatever their number.
    """
    n_chunks = sum(len(s) for s in sections)
    asked_sections: set[int] = set()
    asked_chunks: set[int] = set()
    covered: set[int] = set()
    for level, section_id, chunk_ids in asked:
        if level == "global":
            continue
        asked_sections.add(section_id)
        covered.update(chunk_ids)
        if level == "chunk":
            asked_chunks.update(chunk_ids)
    order = [c for s in sections for c in s]
    gap = run = 0
    for c in order:
        run = 0 if c in covered else run + 1
        gap = max(gap, run)
    spacing = n_chunks / len(asked_sections) if asked_sections else float(n_chunks)
    return {"sections": len(asked_sections) / len(sections) if sections else 0.0,
            "chunks": len(asked_chunks) / n_chunks if n_chunks else 0.0,
            "largest_gap": gap / spacing if n_chunks else 0.0}


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
