"""The question plan: hierarchy order, counts, follow-ups, grounding chunks, determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from longctx.generate.params import GenerateParams
from longctx.generate.walk import DIVERSE_TYPES, plan_diverse, plan_hierarchical

SECTIONS = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13]]  # 14 chunks in 5 sections


def plan(n=25, n_global=2, p=0.5, per_section=3, seed=0, sections=SECTIONS):
    return plan_hierarchical(n, n_global, sections, p, per_section, random.Random(seed))


def test_counts_and_global_first():
    steps = plan()
    assert len(steps) == 25
    assert [s.index for s in steps] == list(range(25))
    assert [s.level for s in steps[:2]] == ["global", "global"]
    assert steps[0].follow_up is False and steps[1].follow_up is True
    assert steps[0].chunk_ids == tuple(range(14))
    assert "global" not in {s.level for s in steps[2:]}


def test_walk_is_in_document_order_and_descends():
    for seed in range(20):
        steps = plan(seed=seed, n=40)
        positions = [(s.section_id, min(s.chunk_ids)) for s in steps[2:]]
        assert [p[0] for p in positions] == sorted(p[0] for p in positions)  # sections in order
        for prev, step in zip(steps[2:], steps[3:]):
            if step.level == "section":  # the next section, or a new pass over the same one
                assert step.section_id >= prev.section_id and not step.follow_up
            else:  # chunk steps stay in the section and never move backwards within a pass
                assert step.section_id == prev.section_id
                assert step.chunk_ids[0] in SECTIONS[step.section_id]
                if step.follow_up:
                    assert step.chunk_ids == prev.chunk_ids and prev.level == "chunk"
                elif prev.level == "chunk":
                    assert step.chunk_ids[0] > prev.chunk_ids[0]
        # every visit starts with its section-level question, grounded on all its chunks
        assert steps[2].level == "section"
        for s in steps:
            if s.level == "section":
                assert list(s.chunk_ids) == SECTIONS[s.section_id]


def test_fewer_questions_than_sections_still_span_the_document():
    many = [[i] for i in range(40)]
    steps = plan(n=10, n_global=1, sections=many)
    visited = sorted({s.section_id for s in steps if s.level == "section"})
    assert visited[0] == 0 and visited[-1] == 39 and len(visited) == 3


def _longest_follow_up_chain(steps):
    longest = run = 0
    for s in steps:
        run = run + 1 if s.follow_up else 0
        longest = max(longest, run)
    return longest


def test_follow_up_probability_extremes():
    never = [plan(p=0.0, seed=s, n=40) for s in range(10)]
    assert all(not s.follow_up for steps in never for s in steps if s.level != "global")
    always = [plan(p=1.0, seed=s, n=40) for s in range(10)]
    for steps in always:  # exploit as long as allowed, then move on: chains of exactly 2
        chunk_steps = [s for s in steps if s.level == "chunk"]
        assert sum(s.follow_up for s in chunk_steps) > len(chunk_steps) / 2
        assert _longest_follow_up_chain(steps) == 2


def test_follow_up_rate_tracks_the_parameter():
    big = [list(range(i * 2000, i * 2000 + 2000)) for i in range(4)]  # never runs out of chunks
    steps = plan_hierarchical(2000, 0, big, 0.3, 500, random.Random(1), max_follow_ups=10_000)
    eligible = [s for s in steps if s.level == "chunk"]
    rate = sum(s.follow_up for s in eligible[1:]) / len(eligible)
    assert abs(rate - 0.3) < 0.05


# ---------------------------------------------------------------- coverage at the default settings
def _default_sections(n_tokens: int) -> list[list[int]]:
    """Sections of a document of ``n_tokens`` at the default budgets (full chunks, as a book's
    paragraph-cut chunks nearly are): 4,096-token chunks, 3 per 12,288-token section."""
    d = GenerateParams()
    n_chunks = -(-n_tokens // d.small_chunk_tokens)
    per = d.medium_chunk_tokens // d.small_chunk_tokens
    return [list(range(i, min(i + per, n_chunks))) for i in range(0, n_chunks, per)]


def _default_walks(n_tokens: int, seeds=range(200)):
    d = GenerateParams()
    sections = _default_sections(n_tokens)
    return sections, [plan_hierarchical(d.n_hierarchical, d.n_global_questions, sections, d.follow_up_probability,
                                        d.questions_per_section, random.Random(seed), d.max_follow_ups)
                      for seed in seeds]


def _position_shares(sections, walks):
    """Share of chunk questions at each position (0, 1, 2) of a full 3-chunk section."""
    counts = Counter(sections[s.section_id].index(s.chunk_ids[0]) for steps in walks for s in steps
                     if s.level == "chunk" and len(sections[s.section_id]) == 3)
    return [counts[i] / sum(counts.values()) for i in range(3)]


@pytest.mark.parametrize("n_tokens, min_coverage", [
    (184_320, 0.70),     # 15 sections: 11 visited (the old walk: 7, 47 %)
    (1_048_576, 0.12),   # 86 sections: 11 visited, every question budget allows (the old walk: 7, 8 %)
])
def test_long_books_spread_sections_and_chunk_positions(n_tokens, min_coverage):
    sections, walks = _default_walks(n_tokens)
    for steps in walks:
        assert len(steps) == 25
        visited = {s.section_id for s in steps if s.section_id is not None}
        assert len(visited) / len(sections) >= min_coverage
        assert 0 in visited and len(sections) - 1 in visited  # from the first section to the last
        assert _longest_follow_up_chain(steps) <= 2
    # every chunk position of a section equally likely (the old walk: 68 % / 29 % / 3 %)
    for share in _position_shares(sections, walks):
        assert 0.28 <= share <= 0.39, _position_shares(sections, walks)


def test_short_document_spreads_over_its_chunks_with_bounded_chains():
    sections, walks = _default_walks(12_288)  # one section of 3 chunks, 23 questions below global
    assert sections == [[0, 1, 2]]
    for steps in walks:
        assert _longest_follow_up_chain(steps) <= 2  # the old walk: up to 19 on the last chunk
        # new (not follow-up) questions per chunk: balanced, whatever the follow-up draws
        stops = Counter(s.chunk_ids[0] for s in steps if s.level == "chunk" and not s.follow_up)
        assert set(stops) == {0, 1, 2} and max(stops.values()) - min(stops.values()) <= 2, stops
        assert sum(s.level == "section" for s in steps) >= 2  # the walk climbs back up for a new pass
    for share in _position_shares(sections, walks):
        assert 0.28 <= share <= 0.39


def test_deterministic_with_seed():
    assert plan(seed=3) == plan(seed=3)
    assert plan_diverse(50, 14, DIVERSE_TYPES, random.Random(3)) == plan_diverse(50, 14, DIVERSE_TYPES, random.Random(3))


def test_diverse_types_and_multi_hop_spans():
    items = plan_diverse(600, 14, DIVERSE_TYPES, random.Random(0))
    counts = Counter(i.type for i in items)
    assert set(counts) == set(DIVERSE_TYPES)
    assert all(60 <= c <= 140 for c in counts.values()), counts  # uniform: 100 expected each
    for item in items:
        if item.type == "multi_hop":
            assert 2 <= len(item.chunk_ids) <= 4 and list(item.chunk_ids) == sorted(set(item.chunk_ids))
        else:
            assert len(item.chunk_ids) == 1
        assert all(0 <= c < 14 for c in item.chunk_ids)
    assert {len(i.chunk_ids) for i in items if i.type == "multi_hop"} == {2, 3, 4}


def test_single_chunk_document_gets_no_multi_hop():
    items = plan_diverse(30, 1, DIVERSE_TYPES, random.Random(0))
    assert "multi_hop" not in {i.type for i in items}
    with pytest.raises(ValueError, match="no usable diverse question type"):
        plan_diverse(3, 1, ["multi_hop"], random.Random(0))
