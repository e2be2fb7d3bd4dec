"""Coverage of the hierarchical walk at the default settings, for a short, a long and a 1M-token book.

Pure planning (``longctx.generate.walk.plan_hierarchical``, no model): for each length, 1,000 seeds of the
walk over sections of full 4,096-token chunks (3 per 12,288-token section), reporting the share
of sections that get a question, the share of chunk questions at each position of a 3-chunk
section, the longest run of follow-ups and the questions per level.

    python bench/bench_walk.py            # writes bench/results/walk_coverage.{md,csv}
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LENGTHS = {"12K": 12_288, "180K": 184_320, "1M": 1_048_576}


def main() -> int:
    from longctx.generate.params import GenerateParams
    from longctx.generate.walk import plan_hierarchical

    d = GenerateParams()
    per = d.medium_chunk_tokens // d.small_chunk_tokens
    rows = []
    for name, n_tokens in LENGTHS.items():
        n_chunks = -(-n_tokens // d.small_chunk_tokens)
        sections = [list(range(i, min(i + per, n_chunks))) for i in range(0, n_chunks, per)]
        coverage, positions, levels, longest = [], Counter(), Counter(), 0
        for seed in range(1000):
            steps = plan_hierarchical(d.n_hierarchical, d.n_global_questions, sections, d.follow_up_probability,
                                      d.questions_per_section, random.Random(seed), d.max_follow_ups)
            coverage.append(len({s.section_id for s in steps if s.section_id is not None}) / len(sections))
            run = 0
            for s in steps:
                levels[s.level] += 1
                run = run + 1 if s.follow_up else 0
                longest = max(longest, run)
                if s.level == "chunk" and len(sections[s.section_id]) == per:
                    positions[sections[s.section_id].index(s.chunk_ids[0])] += 1
        total = sum(positions.values())
        rows.append({"book": name, "sections": len(sections),
                     "sections_with_a_question": round(sum(coverage) / len(coverage), 3),
                     **{f"chunk_position_{i}": round(positions[i] / total, 3) for i in range(per)},
                     "longest_follow_up_run": longest,
                     **{f"per_book_{lv}": levels[lv] / 1000 for lv in ("global", "section", "chunk")}})
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "walk_coverage.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Hierarchical walk coverage, default settings (1,000 seeds each)", "",
             "| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    lines += ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in rows]
    lines += ["", "Before issue 8 the same walk gave 47 % of sections at 180K, 8 % at 1M, chunk positions "
              "68 / 29 / 3 %, and follow-up runs up to 19 on a 12K book."]
    (RESULTS / "walk_coverage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
