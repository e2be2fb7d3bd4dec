"""BABILong from a local folder in ``RMT-team/babilong``'s layout: the official prompt layout and
scoring, checked by hand and, with ``BABILONG_OFFICIAL_REPO`` pointing at a checkout of
booydar/babilong, against its own ``get_formatted_input`` and ``compare_answers``; the stage-4
runner scores it through the embedded llama.cpp server and skips lengths beyond the window."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from test_eval_fixtures import corpus_dir

from longctx.core.config import from_mapping
from longctx.eval import hub
from longctx.eval.babilong import BABILONG_TASKS, babilong_prompt, length_tokens, load_babilong, score_babilong
from longctx.eval.params import EvalConfig

OFFICIAL = os.environ.get("BABILONG_OFFICIAL_REPO", "")
_ROWS = {
    "qa1": [{"input": "  The rain fell. Mary went to the kitchen. Old text here. John moved to the office.\n",
             "question": "Where is Mary?", "target": "kitchen"},
            {"input": "Sandra travelled to the garden. Sandra journeyed to the hallway.",
             "question": "Where is Sandra?", "target": "hallway"}],
    "qa5": [{"input": "Fred gave the milk to Bill. Jeff went to the office.", "question": "Who received the milk?",
             "target": "Bill"}],
}


@pytest.fixture(scope="module")
def babilong_dir(tmp_path_factory) -> Path:
    """``data/{task}/{length}.json`` (JSON lines) + README configs (config = length, split = task)."""
    import datasets

    root = tmp_path_factory.mktemp("babilong")
    configs = []
    for length in ("0k", "1M"):
        splits = []
        for task, rows in _ROWS.items():
            (root / "data" / task).mkdir(parents=True, exist_ok=True)
            (root / "data" / task / f"{length}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
            splits.append(f"  - split: {task}\n    path: data/{task}/{length}.json\n")
        configs.append(f"- config_name: {length}\n  data_files:\n" + "".join(splits))
    (root / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n")
    with pytest.MonkeyPatch.context() as mp:  # datasets keys a local folder's cache by its name
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets_cache")))
        yield root


def test_prompt_layout_from_the_harness_texts(babilong_dir):
    pytest.importorskip("lm_eval")
    (s, t) = load_babilong("qa1", "0k", str(babilong_dir))
    assert s.context_length == 0 and s.max_new_tokens == 20 and s.chat and s.references == ["kitchen"]
    instruction, first, second, rest = s.prompt.split("\n\n", 3)
    assert instruction.startswith("I will give you context with the facts about positions of different persons")
    assert first.startswith("<example>\nCharlie went to the hallway.") and second.startswith("<example>\nAlan")
    assert first.endswith("Where is Charlie?\nAnswer: The most recent location of Charlie is balcony.\n</example>")
    assert "\n\nAlways return your answer in the following format: The most recent location of" in s.prompt
    assert s.prompt.endswith("\n\n<context>\nThe rain fell. Mary went to the kitchen. Old text here. John moved to "
                             "the office.\n</context>\n\nQuestion: Where is Mary?")
    assert t.prompt.endswith("Question: Where is Sandra?") and length_tokens("1M") == 1_000_000


@pytest.mark.parametrize("prediction,target,question,want", [
    ("The most recent location of Mary is kitchen.", "kitchen", "Where is Mary?", 1.0),
    ("Kitchen", "kitchen", "Where is Mary?", 1.0),
    ("Mary is in the kitchen or the office.", "kitchen", "Where is Mary?", 0.0),          # two labels
    ("The office. Before that the kitchen.", "kitchen", "Where is Mary?", 0.0),          # first sentence only
    ("The milk is in the kitchen", "kitchen", "Where is the milk?", 1.0),
    ("Bill received the milk.", "Bill", "Who received the milk?", 1.0),                  # milk: in the question
    ("Fred gave it to Bill.", "Bill", "Who received the milk?", 0.0),
    ("kitchen <example> office", "kitchen", "Where is Mary?", 1.0),
])
def test_scoring_hand_checked(prediction, target, question, want):
    task = "qa5" if target == "Bill" else "qa1"
    assert score_babilong(task, prediction, target, question) == want


@pytest.mark.skipif(not OFFICIAL, reason="set BABILONG_OFFICIAL_REPO to a checkout of booydar/babilong")
def test_against_the_official_code(babilong_dir):
    sys.path.insert(0, OFFICIAL)
    try:
        from babilong.metrics import TASK_LABELS, compare_answers
        from babilong.prompts import DEFAULT_PROMPTS, get_formatted_input
    finally:
        sys.path.remove(OFFICIAL)
    prompts_file = str(Path(OFFICIAL) / "babilong" / "prompts.py")
    for task, rows in _ROWS.items():
        assert set(BABILONG_TASKS[task]) == set(TASK_LABELS[task])
        p = DEFAULT_PROMPTS[task]
        for sample, row in zip(load_babilong(task, "0k", str(babilong_dir), prompts_file), rows):
            assert sample.prompt == get_formatted_input(row["input"], row["question"], p["examples"],
                                                        p["instruction"], p["post_prompt"])
        for reply in ("The most recent location of Mary is kitchen.", "office", "Bill. kitchen", "Fred and Bill",
                      "milk", "Kitchen <context> office", "hallway, garden", "the Garden.", "", "Question: kitchen",
                      "Bill received the milk.", "Mary is in the kitchen or the office"):
            for row in rows:
                assert score_babilong(task, reply, row["target"], row["question"]) == \
                    float(compare_answers(row["target"], reply, row["question"], TASK_LABELS[task])), (task, reply)


def test_missing_length_names_task_length_and_source(babilong_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.Unavailable, match=r"cannot load .*babilong/qa1 at 128k from "):
        load_babilong("qa1", "128k", str(babilong_dir))
    hub.hub_reachable.cache_clear()
    try:
        with pytest.raises(hub.Unavailable, match=r"not reachable .*babilong/qa2 at 4k from RMT-team/babilong"):
            load_babilong("qa2", "4k")
    finally:
        hub.hub_reachable.cache_clear()
    with pytest.raises(Exception, match="babilong_lengths"):
        from_mapping(EvalConfig, {"benchmarks": ["babilong"], "babilong_lengths": ["3k"]}).check()


def test_runner_scores_babilong_through_llama_cpp(babilong_dir, tmp_path, monkeypatch):
    pytest.importorskip("xllamacpp")
    pytest.importorskip("lm_eval")
    from longctx.eval.runner import open_backend, run_suite

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = from_mapping(EvalConfig, {
        "benchmarks": ["babilong"], "babilong_tasks": ["qa1"], "babilong_lengths": ["0k", "1M"],
        "babilong_hub_id": str(babilong_dir), "context_window": 2048, "max_new_tokens_cap": 8,
        "haystack_corpus": str(corpus_dir(tmp_path)), "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "samples")})
    with open_backend(cfg) as backend:
        rows = run_suite(cfg, backend, "bl")
    got = {r.context_length: r for r in rows.itertuples()}
    assert got[0].n_scored == 2 and got[0].metric == "accuracy" and "prompts: lm-eval task files" in got[0].note
    assert "exceeds the model's 2048-token window" in got[1_000_000].skipped
    preds = [json.loads(line) for line in (tmp_path / "out" / "bl" / "predictions.jsonl").open()]
    want = [score_babilong("qa1", p["prediction"], p["references"][0], p["meta"]["question"]) for p in preds
            if p.get("prediction") is not None]
    assert float(got[0].score) == pytest.approx(100 * sum(want) / 2)
