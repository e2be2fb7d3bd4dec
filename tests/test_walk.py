"""The question plan: hierarchy order, counts, follow-ups, grounding chunks, determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from longctx.generate.params import GenerateParams
from longctx.generate.walk import DIVERSE_TYPES, coverage, plan_diverse, plan_hierarchical

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
    for seed in range(20):
        steps = plan(n=10, n_global=1, sections=many, seed=seed)
        visited = sorted({s.section_id for s in steps if s.level == "section"})
        # 9 questions, 3 per visit: 3 visits, a systematic sample (one every 13.3 sections)
        assert len(visited) == 3
        gaps = [b - a for a, b in zip([-1] + visited, visited + [40])]
        assert max(gaps) <= 14, visited


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
        # from the start of the book to its end: no stretch longer than the even spacing
        assert coverage(sections, [(s.level, s.section_id, s.chunk_ids) for s in steps])["largest_gap"] <= 1.0
        assert _longest_follow_up_chain(steps) <= 2
    # every chunk position of a section equally likely (the old walk: 68 % / 29 % / 3 %)
    for share in _position_shares(sections, walks):
        assert 0.28 <= share <= 0.39, _position_shares(sections, walks)


def _follow_up_rate(walks, max_follow_ups=2):
    """Of the chunk questions after which the walk goes on and may still follow up, the share
    whose next step is a follow-up: what follow_up_probability asks for."""
    eligible = follow_ups = 0
    for steps in walks:
        chain = 0
        for step, after in zip(steps, steps[1:]):
            chain = chain + 1 if step.follow_up else 0
            if step.level == "chunk" and chain < max_follow_ups:
                eligible += 1
                follow_ups += after.follow_up
    return follow_ups / eligible


@pytest.mark.parametrize("n_tokens", [102_400, 184_320, 512_000, 1_048_576])
@pytest.mark.parametrize("p", [0.3, 0.5])
def test_follow_ups_take_effect_and_the_walk_stays_spread_at_every_length(n_tokens, p):
    # issue 19: from ~130K up the old walk spent 2 questions per visit, so a chunk question was
    # followed by a move to the next section: 0.05 follow-ups per chance instead of 0.5
    d = GenerateParams()
    sections = _default_sections(n_tokens)
    walks = [plan_hierarchical(d.n_hierarchical, d.n_global_questions, sections, p, d.questions_per_section,
                               random.Random(seed), d.max_follow_ups) for seed in range(300)]
    assert abs(_follow_up_rate(walks) - p) <= 0.2 * p
    for steps in walks:
        assert len(steps) == d.n_hierarchical
        cover = coverage(sections, [(s.level, s.section_id, s.chunk_ids) for s in steps])
        assert cover["largest_gap"] <= 1.5
        # as many sections as the budget allows (2 questions a visit), follow-ups or not
        assert cover["sections"] == min(1.0, 11 / len(sections))


def test_coverage_by_hand():
    sections = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]  # 11 chunks
    asked = [("global", None, tuple(range(11))), ("section", 1, (3, 4, 5)), ("chunk", 1, (4,)),
             ("chunk", 1, (4,)), ("chunk", 3, (10,))]
    # sections 1 and 3 asked (even spacing 11 / 2 = 5.5 chunks); uncovered runs 0-2 and 6-9: 4 chunks
    assert coverage(sections, asked) == {"sections": 0.5, "chunks": 2 / 11, "largest_gap": 4 / 5.5}
    assert coverage(sections, asked[:1]) == {"sections": 0.0, "chunks": 0.0, "largest_gap": 1.0}


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


def test_alternatives_move_to_the_nearest_part_no_step_asks_about():
    from longctx.generate.walk import HierStep, alternatives
    sections = [[0, 1, 2], [3, 4, 5], [6, 7]]
    planned = [HierStep(0, "global", None, tuple(range(8)), False),
               HierStep(1, "section", 1, (3, 4, 5), False), HierStep(2, "chunk", 1, (4,), False),
               HierStep(3, "chunk", 1, (4,), True), HierStep(4, "chunk", 1, (5,), False),
               HierStep(5, "section", 2, (6, 7), False)]
    moves = alternatives(planned[2], sections, planned)
    # unasked chunks nearest first, the later one first at equal distance; asked ones last
    assert [m.chunk_ids[0] for m in moves] == [3, 6, 2, 7, 1, 0, 5]
    assert all(m.index == 2 and m.level == "chunk" and not m.follow_up for m in moves)
    assert [m.section_id for m in moves] == [1, 2, 0, 2, 0, 0, 1]  # the section each chunk is in
    sections_moves = alternatives(planned[1], sections, planned)
    assert [(m.section_id, m.chunk_ids) for m in sections_moves] == [(0, (0, 1, 2)), (2, (6, 7))]
    assert alternatives(planned[0], sections, planned) == []


@pytest.mark.parametrize("sections", [[[0, 1, 2]], [[0, 1, 2], [3, 4, 5], [6, 7]], SECTIONS])
def test_a_new_pass_opens_with_a_section_question_followed_by_a_chunk_question(sections):
    # a second pass's section question with nothing asked below it would waste a question
    for seed in range(200):
        steps = plan_hierarchical(25, 2, sections, 0.5, 2, random.Random(seed))
        assert len(steps) == 25
        for before, step, after in zip(steps[2:], steps[3:], steps[4:]):
            if step.level == "section" and before.section_id == step.section_id:  # a second pass
                assert after.level == "chunk" and after.section_id == step.section_id, (seed, steps)
