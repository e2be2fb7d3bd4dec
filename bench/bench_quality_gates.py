"""Catch and false-reject rates of the stage-1 quality gates on the planted QA set, before and after issue 19.

The planted set (``tests/fixtures/planted_qa.json``): 16 real paragraphs of Austen's six novels,
112 good question-answer pairs written about them and 112 planted bad ones of eight kinds
(cut off, restatement, non-answer, leak, unsupported names or numbers, paraphrased duplicate,
other language, question about another novel). Every pair goes through ``qa_problem`` as the
pipeline calls it (``tests/fixtures/planted_qa.py`` says how); "before" runs the gates of commit
2523403 (loaded from git) on the same set, side by side in one run.

The duplicate detector is measured on its own too: on the planted paraphrase pairs (each against
the good question it paraphrases) and on every pair of distinct good questions about one passage
and about one book, with and without the answers.

    python bench/bench_quality_gates.py     # writes bench/results/quality_gates.{md,csv}
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BEFORE = "2523403"  # the tree issue 19 was filed against
sys.path.insert(0, str(ROOT / "tests"))


def _old_gates():
    """quality.py as of BEFORE, as a module of its own."""
    source = subprocess.run(["git", "show", f"{BEFORE}:lib/longctx/generate/quality.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader("quality_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, "quality_before.py", "exec"), module.__dict__)
    return module


def _screen_old(old, planted: dict, min_support: float) -> list[dict]:
    out = []
    for pid, passage in planted["passages"].items():
        items = [i for i in planted["items"] if i["passage"] == pid]
        goods = [i for i in items if i["category"] == "good"]
        seen = old.QuestionIndex()
        for item in goods:
            reason = old.qa_problem(item["question"], item["answer"], seen, passage["text"], min_support)
            if reason is None:
                seen.add(item["question"])
            out.append({**item, "reason": reason})
        for item in (i for i in items if i["category"] != "good"):
            reason = old.qa_problem(item["question"], item["answer"], old.QuestionIndex(g["question"] for g in goods),
                                    passage["text"], min_support)
            out.append({**item, "reason": reason})
    return out


def _duplicate_rates(planted: dict) -> list[dict]:
    from longctx.generate.quality import QuestionIndex
    from rapidfuzz import fuzz

    def flagged(a: dict, b: dict, with_answers: bool) -> bool:
        index = QuestionIndex()
        index.add(b["question"], b["answer"] if with_answers else None)
        return index.duplicates(a["question"], a["answer"] if with_answers else None)

    goods = [i for i in planted["items"] if i["category"] == "good"]
    paraphrase_pairs = []
    for item in (i for i in planted["items"] if i["category"] == "paraphrase_duplicate"):
        same = [g for g in goods if g["passage"] == item["passage"]]  # the good question it paraphrases:
        paraphrase_pairs.append((item, max(same, key=lambda g: fuzz.token_sort_ratio(  # the nearest answer
            g["answer"].lower(), item["answer"].lower()))))
    passage_pairs = [p for pid in planted["passages"]
                     for p in itertools.combinations([g for g in goods if g["passage"] == pid], 2)]
    book = {pid: p["book"] for pid, p in planted["passages"].items()}
    book_pairs = [(a, b) for a, b in itertools.combinations(goods, 2) if book[a["passage"]] == book[b["passage"]]]
    rows = []
    for name, pairs in [("paraphrase pairs (should be flagged)", paraphrase_pairs),
                        ("distinct questions, one passage (should not)", passage_pairs),
                        ("distinct questions, one book (should not)", book_pairs)]:
        row = {"pairs": name, "n": len(pairs)}
        for mode, with_answers in (("words only", False), ("words + answers", True)):
            row[f"flagged, {mode}"] = round(sum(flagged(a, b, with_answers) for a, b in pairs) / len(pairs), 3)
        rows.append(row)
    return rows


def main() -> int:
    from fixtures.planted_qa import load_planted, rates, screen_planted
    from longctx.generate.params import GenerateParams

    planted = load_planted()
    min_support = GenerateParams().min_answer_support
    started = time.perf_counter()
    after = rates(screen_planted(planted, min_support))
    after_s = time.perf_counter() - started
    before = rates(_screen_old(_old_gates(), planted, min_support))
    order = ["cut_off", "restatement", "non_answer", "leak", "unsupported", "paraphrase_duplicate", "other_language",
             "other_document", "all bad", "good"]
    rows = []
    for category in order:
        a, b = after[category], before[category]
        top = ", ".join(f"{r} {n}" for r, n in a["reasons"].most_common(2))
        rows.append({"category": category, "items": a["items"],
                     "rejected_before": round(b["rate"], 3), "rejected_after": round(a["rate"], 3),
                     "gates_that_caught_it_after": top})
    dup_rows = _duplicate_rates(planted)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "quality_gates.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Quality gates on the planted QA set",
        "",
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, Python {platform.python_version()}. "
        f"Command: `python bench/bench_quality_gates.py`. Set: `tests/fixtures/planted_qa.json` "
        f"({len(planted['passages'])} Austen paragraphs, {after['good']['items']} good and "
        f"{after['all bad']['items']} planted bad QA); support check at min_answer_support {min_support}. "
        f"Share rejected per category: for bad QA the catch rate, for good QA the false-reject rate; "
        f"before = the gates of {BEFORE}. Screening the set took {after_s * 1000:.0f} ms.",
        "",
        "| " + " | ".join(rows[0]) + " |", "| " + " | ".join("---" for _ in rows[0]) + " |",
        *["| " + " | ".join(str(v) for v in r.values()) + " |" for r in rows],
        "",
        "Near-duplicate detection alone (share of pairs flagged as duplicates):",
        "",
        "| " + " | ".join(dup_rows[0]) + " |", "| " + " | ".join("---" for _ in dup_rows[0]) + " |",
        *["| " + " | ".join(str(v) for v in r.values()) + " |" for r in dup_rows],
        "",
        "The set was written by the same hand that tuned the gates, so these are rates on known kinds of "
        "failure, not a blind estimate; the judge pass (`judge_qa`) remains the check for wrong facts that "
        "use only the passage's own words.",
    ]
    (RESULTS / "quality_gates.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
