"""The question plan: hierarchy order, counts, follow-ups, grounding chunks, determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from longctx.walk import DIVERSE_TYPES, plan_diverse, plan_hierarchical

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
    steps = plan()
    positions = [(s.section_id, min(s.chunk_ids)) for s in steps[2:]]
    assert [p[0] for p in positions] == sorted(p[0] for p in positions)  # sections in order
    for prev, step in zip(steps[2:], steps[3:]):
        if step.level == "section":
            assert prev.section_id is None or step.section_id > prev.section_id
        else:  # chunk steps stay in the section and never move backwards
            assert step.section_id == prev.section_id
            assert step.chunk_ids[0] >= prev.chunk_ids[0]
            assert step.chunk_ids[0] in SECTIONS[step.section_id]
            if step.follow_up:
                assert step.chunk_ids == prev.chunk_ids
    # every visited section starts with its section-level question, grounded on all its chunks
    for s in steps:
        if s.level == "section":
            assert list(s.chunk_ids) == SECTIONS[s.section_id]


def test_fewer_questions_than_sections_still_span_the_document():
    many = [[i] for i in range(40)]
    steps = plan(n=10, n_global=1, sections=many)
    visited = sorted({s.section_id for s in steps if s.level == "section"})
    assert visited[0] == 0 and visited[-1] == 39 and len(visited) == 3


@pytest.mark.parametrize("p, expect", [(0.0, 0), (1.0, None)])
def test_follow_up_probability_extremes(p, expect):
    steps = plan(p=p)
    chunk_follow_ups = sum(s.follow_up for s in steps if s.level == "chunk")
    if expect == 0:
        # never exploit unless the section has no next chunk to move to
        assert all(not s.follow_up or s.chunk_ids[0] == SECTIONS[s.section_id][-1] for s in steps if s.level == "chunk")
    else:
        # always exploit: after descending to the first chunk, never move on
        assert all(s.chunk_ids[0] == SECTIONS[s.section_id][0] for s in steps if s.level == "chunk")
        assert chunk_follow_ups > 0


def test_follow_up_rate_tracks_the_parameter():
    big = [list(range(i * 2000, i * 2000 + 2000)) for i in range(4)]  # never runs out of chunks
    steps = plan_hierarchical(2000, 0, big, 0.3, 500, random.Random(1))
    eligible = [s for s in steps if s.level == "chunk"]
    rate = sum(s.follow_up for s in eligible) / len(eligible)
    assert abs(rate - 0.3) < 0.05


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
