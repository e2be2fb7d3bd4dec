"""LongBench against lm-evaluation-harness, the field's harness: the same rows, loaded from a
local copy laid out like the parquet mirror lm-eval reads (``Xnhyacinth/LongBench``), give
byte-equal prompts (lm-eval's ``doc_to_text`` / ``fewshot_context``, except the 6 documented
whitespace fixes that restore LongBench's own ``dataset2prompt.json``) and equal scores (lm-eval's
``process_results`` on the same predictions). With ``LONGBENCH_OFFICIAL_PROMPTS`` pointing at the
official ``config/dataset2prompt.json`` the prompts are also checked against it, byte for byte."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")  # the harness extra

from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402

from longctx.eval import hub  # noqa: E402
from longctx.eval.longbench import HUB_ID, LONGBENCH_TASKS, load_longbench, prompt_template, score_longbench  # noqa: E402
from longctx.eval.params import EvalConfig  # noqa: E402

_ZH = {"multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh"}
_CLASSES = {"trec": ["Description", "Entity", "Location", "Number"], "lsht": ["体育", "财经", "教育"]}


def _rows(task: str) -> list[dict]:
    """Rows shaped like the mirror's (columns of lm-eval's task files plus LongBench's own), with
    text that a template engine could trip on (braces, Jinja markers, trailing newlines)."""
    zh = task in _ZH
    rows = []
    for i in range(3):
        if task in ("lcc", "repobench-p"):
            context = f"def f{i}(x):\n    return {{'k': x}}  # {{{{ not jinja }}}}\n\n"
            question, answers = (f"class C{i}:\n    pass\n" if task == "repobench-p" else ""), [f"y = f{i}(2)"]
        elif zh:
            context = f"第{i}段：老磨坊在河边。{{文字}}\n\n"
            question = f"磨坊在哪里{i}？"
            answers = {"lsht": ["体育"], "passage_retrieval_zh": ["段落2"]}.get(task, ["在河边", "河边"])
        else:
            context = f"Paragraph {i}: The old mill {{stands}} by the {{{{river}}}}.\n"
            question = f"Where is the mill {i}?"
            answers = {"trec": ["Location"], "passage_count": ["3"],
                       "passage_retrieval_en": ["Paragraph 2"]}.get(task, ["by the river", "the river"])
        rows.append({"context": context, "question": question, "answers": answers,
                     "all_classes": _CLASSES.get(task), "length": 40 + i, "dataset": task,
                     "language": "zh" if zh else "en", "_id": f"{task}-{i}"})
    return rows


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """A local folder in the hub mirror's layout: ``{task}/test-*.parquet`` + README configs.
    lm-eval loads it through ``datasets``' cache, which keys a local folder by its name: a fresh
    cache folder keeps an earlier run's rows out of the oracle."""
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("datasets_cache"))
        yield _write_mirror(tmp_path_factory.mktemp("longbench_mirror"))


def _write_mirror(root: Path) -> Path:
    import datasets

    configs = []
    for task in LONGBENCH_TASKS:
        (root / task).mkdir()
        datasets.Dataset.from_list(_rows(task)).to_parquet(str(root / task / "test-00000-of-00001.parquet"))
        configs.append(f"- config_name: {task}\n  data_files:\n  - split: test\n    path: {task}/test-*.parquet\n")
    (root / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n")
    return root


def _lm_eval_task(task: str, mirror: Path) -> ConfigurableTask:
    """lm-eval's own task object, its dataset path pointed at the local mirror."""
    cfg = load_yaml(str(resources.files("lm_eval") / "tasks" / "longbench" / f"{task}.yaml"))
    assert cfg["dataset_path"] == HUB_ID  # we read the mirror lm-eval reads
    cfg["dataset_path"] = str(mirror)
    return ConfigurableTask(config=cfg)


# Where lm-eval 0.4.13's files differ from LongBench's dataset2prompt.json (read side by side with
# THUDM/LongBench 2e00731): task -> the official text's end after the context, or what it appends.
_OFFICIAL_DELTA = {"triviaqa": ("\n{question}", "\n\n{question}"), "samsum": ("\n{question}", "\n\n{question}"),
                   "passage_count": ("", " "), "passage_retrieval_en": ("", " "),
                   "lcc": ("", "\n"), "repobench-p": ("", "\n")}


def _lm_eval_render(task_obj: ConfigurableTask, doc: dict, task: str) -> str:
    text = task_obj.fewshot_context(doc, 0)
    assert text == task_obj.doc_to_text(doc)  # zero-shot, no description: the prompt is doc_to_text
    if task in _OFFICIAL_DELTA:
        theirs, official = (t.format(question=doc["question"]) for t in _OFFICIAL_DELTA[task])
        assert text.endswith(theirs)
        text = text[:len(text) - len(theirs)] + official
    return text


@pytest.mark.parametrize("task", list(LONGBENCH_TASKS))
def test_prompts_and_scores_equal_lm_eval_on_the_same_rows(task, mirror, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing leaves the machine
    ours = load_longbench(task, 0, hub_id=str(mirror))
    theirs = _lm_eval_task(task, mirror)
    docs = list(theirs.test_docs())
    assert len(ours) == len(docs) == 3
    for sample, doc in zip(ours, docs):
        assert sample.prompt == _lm_eval_render(theirs, doc, task)
        assert sample.max_new_tokens == theirs.config.generation_kwargs["max_gen_toks"]
        # predictions as lm-eval's generation leaves them (stripped; the few-shot sets stop at "\n")
        for prediction in (doc["answers"][0], "It is " + doc["answers"][-1], "nothing useful", "Paragraph 7",
                           "段落3"):
            want = theirs.process_results(doc, [prediction])["score"]
            got = score_longbench(task, prediction, sample.references, sample.meta["all_classes"])
            assert got == pytest.approx(want, abs=1e-12), (prediction, got, want)


def test_whitespace_fixes_are_exactly_the_documented_ones(mirror):
    """Every template equals lm-eval's file except the 6 tasks the official file spaces otherwise."""
    for task in LONGBENCH_TASKS:
        cfg = load_yaml(str(resources.files("lm_eval") / "tasks" / "longbench" / f"{task}.yaml"), resolve_func=False)
        assert (prompt_template(task) != cfg["doc_to_text"]) == (task in _OFFICIAL_DELTA), task


@pytest.mark.skipif(not os.environ.get("LONGBENCH_OFFICIAL_PROMPTS"),
                    reason="set LONGBENCH_OFFICIAL_PROMPTS to THUDM/LongBench's LongBench/config/dataset2prompt.json")
def test_prompts_equal_the_official_file_byte_for_byte():
    official = json.loads(Path(os.environ["LONGBENCH_OFFICIAL_PROMPTS"]).read_text(encoding="utf-8"))
    assert set(official) == set(LONGBENCH_TASKS)
    from longctx.eval.longbench import longbench_prompt

    row = {"context": "C {x} {{y}}", "input": "Q?"}
    for task, fmt in official.items():
        assert longbench_prompt(task, row) == fmt.format(**row), task


def test_paper_profile_points_at_a_mirror_datasets_loads():
    from longctx.core.config import load_params

    cfg = load_params(EvalConfig, "params/paper/04_evaluate.yaml")
    assert cfg.longbench_hub_id == HUB_ID == EvalConfig().longbench_hub_id


def test_a_set_that_cannot_load_names_the_task_and_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    try:
        with pytest.raises(hub.Unavailable, match=r"longbench/qasper from /nonexistent/qasper.parquet"):
            load_longbench("qasper", local_path="/nonexistent/qasper.parquet")
        with pytest.raises(hub.Unavailable, match=r"not reachable .*longbench/qasper from Xnhyacinth/LongBench"):
            load_longbench("qasper")
        (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: trec\n  data_files:\n  - split: test\n"
                                            "    path: trec/*.parquet\n---\n")
        with pytest.raises(hub.Unavailable, match=rf"cannot load {tmp_path} \(config qasper.*longbench/qasper"):
            load_longbench("qasper", hub_id=str(tmp_path))
    finally:
        hub.hub_reachable.cache_clear()


def test_official_release_rows_with_input_column_read_the_same(tmp_path, mirror):
    """The release's data/*.jsonl name the question ``input``; the prompt is the same."""
    import datasets

    rows = [{**{k: v for k, v in r.items() if k != "question"}, "input": r["question"]} for r in _rows("hotpotqa")]
    path = tmp_path / "hotpotqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [s.prompt for s in load_longbench("hotpotqa", local_path=str(path))] == \
        [s.prompt for s in load_longbench("hotpotqa", hub_id=str(mirror))]
    del datasets


def test_without_lm_eval_the_row_says_how_to_get_the_prompts(monkeypatch, mirror):
    import sys

    from longctx.eval import longbench

    longbench.prompt_template.cache_clear()
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the harness extra were not installed
    try:
        with pytest.raises(hub.Unavailable, match=r"pip install 'longctx\[harness\]'"):
            load_longbench("narrativeqa", hub_id=str(mirror))
    finally:
        longbench.prompt_template.cache_clear()
