"""Coverage of the hierarchical walk at the default settings, from a 12K to a 1M-token book, and
the walk's shortfall when one step can never pass.

Pure planning (``longctx.generate.walk.plan_hierarchical``, no model): for each length, 1,000 seeds of the
walk over sections of full 4,096-token chunks (3 per 12,288-token section), reporting

* follow-ups: per book, and the *follow-up rate*: of the chunk questions after which the walk goes
  on and may still follow up (fewer than ``max_follow_ups`` in a row), the share followed by a
  follow-up, against the requested ``follow_up_probability`` (issue 19: within 20 %);
* the share of sections with a section or chunk question, and of chunks with a chunk question;
* the largest stretch of the book inside no asked section or chunk, over the even spacing of the
  sections the walk asks about (``walk.coverage``; issue 19: <= 1.5), and, for reference, over
  ``book / 23`` (the spacing of the 23 section and chunk questions if each went to a new place,
  which follow-ups, by asking again about the same chunk, cannot reach);
* the share of chunk questions at each position of a 3-chunk section, the longest run of
  follow-ups and the questions per level.

The shortfall table runs the real retry loop (``pipeline._DocumentRun.hierarchical``) against a
simulated generator: every generation is rejected with probability 0.2 ("background"), and one
thing per document never passes: a walk step (its planned question, on its planned part: a
follow-up that keeps coming back as a duplicate) or a chunk (every question on it: a contents
page, an index). 1,000 documents per row; default ``max_qa_attempts`` (3) and ``qa_budget`` (2).

    python bench/bench_walk.py            # writes bench/results/walk_coverage.{md,csv}
"""

from __future__ import annotations

import asyncio
import csv
import random
import statistics
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LENGTHS = {"12K": 12_288, "100K": 102_400, "180K": 184_320, "500K": 512_000, "1M": 1_048_576}
SEEDS = 1000
BACKGROUND_REJECTS = 0.2


def sections_of(n_tokens: int) -> list[list[int]]:
    from longctx.generate.params import GenerateParams

    d = GenerateParams()
    n_chunks = -(-n_tokens // d.small_chunk_tokens)
    per = d.medium_chunk_tokens // d.small_chunk_tokens
    return [list(range(i, min(i + per, n_chunks))) for i in range(0, n_chunks, per)]


def walk(sections, seed, p=None):
    from longctx.generate.params import GenerateParams
    from longctx.generate.walk import plan_hierarchical

    d = GenerateParams()
    return plan_hierarchical(d.n_hierarchical, d.n_global_questions, sections,
                             d.follow_up_probability if p is None else p, d.questions_per_section,
                             random.Random(seed), d.max_follow_ups)


def coverage_row(name: str, n_tokens: int) -> dict:
    from longctx.generate.params import GenerateParams
    from longctx.generate.walk import coverage

    d = GenerateParams()
    sections = sections_of(n_tokens)
    n_chunks = sum(map(len, sections))
    per = d.medium_chunk_tokens // d.small_chunk_tokens
    positions, levels, longest = Counter(), Counter(), 0
    chances = follow_ups = chunk_follow_ups = 0
    shares_s, shares_c, gaps, budget_gaps = [], [], [], []
    for seed in range(SEEDS):
        steps = walk(sections, seed)
        cover = coverage(sections, [(s.level, s.section_id, s.chunk_ids) for s in steps])
        shares_s.append(cover["sections"])
        shares_c.append(cover["chunks"])
        gaps.append(cover["largest_gap"])
        # the same stretch over book / (section and chunk questions), in chunks
        n_sections = len({s.section_id for s in steps if s.section_id is not None})
        n_asked = sum(s.level != "global" for s in steps)
        budget_gaps.append(cover["largest_gap"] * (n_chunks / n_sections) / (n_chunks / n_asked))
        run = 0
        for s, after in zip(steps, steps[1:] + [None]):
            levels[s.level] += 1
            chunk_follow_ups += s.level == "chunk" and s.follow_up
            run = run + 1 if s.follow_up else 0
            longest = max(longest, run)
            if s.level == "chunk" and len(sections[s.section_id]) == per:
                positions[sections[s.section_id].index(s.chunk_ids[0])] += 1
            if after is not None and s.level == "chunk" and run < d.max_follow_ups:
                chances += 1
                follow_ups += after.follow_up
    total = sum(positions.values())
    return {"book": name, "sections": len(sections),
            "follow_ups_per_book": round(chunk_follow_ups / SEEDS, 2),
            "follow_up_rate": round(follow_ups / chances, 3) if chances else "",
            "sections_with_a_question": round(statistics.mean(shares_s), 3),
            "chunks_with_a_question": round(statistics.mean(shares_c), 3),
            "largest_gap_over_even_spacing_max": round(max(gaps), 2),
            "largest_gap_over_book_per_23_median": round(statistics.median(budget_gaps), 2),
            **{f"chunk_position_{i}": round(positions[i] / total, 3) if total else "" for i in range(per)},
            "longest_follow_up_run": longest,
            **{f"per_book_{lv}": levels[lv] / SEEDS for lv in ("global", "section", "chunk")}}


class _Simulated:
    """The real ``hierarchical`` retry loop against a simulated generator (see the docstring)."""

    @staticmethod
    def run(sections, steps, doc_seed: int, never: str) -> tuple[int, int, int]:
        from longctx.generate.chunking import Chunking, Section
        from longctx.generate.params import GenerateParams
        from longctx.generate.pipeline import _DocumentRun
        from longctx.generate.prompts import load_prompts

        rng = random.Random(f"shortfall:{doc_seed}")
        chunk_steps = [s for s in steps if s.level == "chunk"]
        if never == "step":
            bad_step = rng.choice([s for s in steps if s.level != "global"]).index
            bad_chunk = None
        elif never == "chunk":
            bad_step, bad_chunk = None, rng.choice(chunk_steps).chunk_ids[0]
        else:
            bad_step = bad_chunk = None

        class Run(_DocumentRun):
            def _step_prompt(self, step, follow_up, summaries, previous):
                return (step, follow_up), ""

            async def _attempt(self, stage, key, attempt, prompt, source, seen, category):
                step, follow_up = prompt
                planned = steps[step.index]
                if (step.index == bad_step and step.chunk_ids == planned.chunk_ids) or (
                        bad_chunk is not None and step.level == "chunk" and step.chunk_ids == (bad_chunk,)):
                    return "never passes"
                if rng.random() < BACKGROUND_REJECTS:
                    return "background reject"
                return {"question": f"q{key}-{attempt}", "answer": "a"}

        chunking = Chunking([], [], [Section(i, list(c), 0, 0, 0, 0) for i, c in enumerate(sections)])
        run = Run(None, load_prompts(), GenerateParams(), None, chunking, lambda: None)
        kept = asyncio.run(run.hierarchical(steps, {}))
        return len(steps) - len(kept), run.result.qa_generations["hierarchical"], \
            sum(1 for q in kept if q["follow_up"] and q["level"] == "chunk")


def shortfall_row(name: str, n_tokens: int, never: str) -> dict:
    sections = sections_of(n_tokens)
    shortfalls, spent, kept_follow_ups = [], [], []
    for seed in range(SEEDS):
        missing, used, follow_ups = _Simulated.run(sections, walk(sections, seed), seed, never)
        shortfalls.append(missing)
        spent.append(used)
        kept_follow_ups.append(follow_ups)
    return {"book": name, "never_passing": never, "shortfall_mean": round(statistics.mean(shortfalls), 2),
            "shortfall_max": max(shortfalls), "shortfall_over_1": round(sum(s > 1 for s in shortfalls) / SEEDS, 3),
            "generations_mean": round(statistics.mean(spent), 1),
            "kept_chunk_follow_ups_per_book": round(statistics.mean(kept_follow_ups), 2)}


def table(rows: list[dict]) -> list[str]:
    return (["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
            + ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in rows])


def main() -> int:
    from longctx.generate.params import GenerateParams

    d = GenerateParams()
    rows = [coverage_row(name, n) for name, n in LENGTHS.items()]
    short = [shortfall_row(name, LENGTHS[name], never) for name in ("100K", "180K", "500K", "1M")
             for never in ("none", "step", "chunk")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "walk_coverage.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(RESULTS / "walk_shortfall.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(short[0]))
        writer.writeheader()
        writer.writerows(short)
    lines = [f"# Hierarchical walk coverage, default settings ({SEEDS:,} seeds each)", "",
             f"Requested follow_up_probability {d.follow_up_probability}, at most {d.max_follow_ups} follow-ups "
             f"in a row; {d.n_hierarchical} questions ({d.n_global_questions} global), "
             f"questions_per_section {d.questions_per_section}.", ""]
    lines += table(rows)
    lines += ["", "Before issue 19 (visits of exactly 2 questions from ~130K up): follow-up rate 0.185 / 0.047 / "
              "0.047 / 0.047 and follow-ups per book 2.40 / 0.52 / 0.52 / 0.52 at 100K / 180K / 500K / 1M; "
              "chunks with a question 0.464 / 0.255 / 0.092 / 0.045; sections 1.0 / 0.733 / 0.262 / 0.128 "
              "(the same); largest stretch over the even spacing at most 0 / 0.73 / 1.06 / 1.03 (median over "
              "book / 23: 0 / 1.53 / 2.21 / 2.16).",
              "Before issue 8 the same walk gave 47 % of sections at 180K, 8 % at 1M, chunk positions "
              "68 / 29 / 3 %, and follow-up runs up to 19 on a 12K book.", "",
              f"## Shortfall with one never-passing step and {BACKGROUND_REJECTS:.0%} background rejects "
              f"({SEEDS:,} documents each; max_qa_attempts {d.max_qa_attempts}, qa_budget {d.qa_budget})", ""]
    lines += table(short)
    lines += ["", "never_passing: none = background rejects only; step = one walk step's planned question "
              "(a follow-up that keeps coming back as a duplicate); chunk = every question on one chunk the "
              "walk asks about (a contents page, an index).",
              "Before issue 19 (this simulation against the walk and retry loop of then) the step retried on "
              "the same part until the document's budget was spent: shortfall mean 3.2 (step) / 3.2-3.5 (chunk), "
              "at most 9 / 11, with 50 generations spent in every document; the issue, simulating otherwise, "
              "measured a mean of 5.6, at most 10."]
    (RESULTS / "walk_coverage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
