"""InfiniteBench inputs as the official code builds them: the hub's files loaded with the
maintainers' ``features`` (OpenBMB/InfiniteBench issue #19) and every prompt cut to 128K in the
middle (``src/eval_yarn_mistral.py``), re-implemented here from a reading of the official code."""

from __future__ import annotations

import json

import datasets
import pytest
from test_eval_fixtures import prose

from longctx.core.tokenizer import load_tokenizer
from longctx.eval.fit import fit_sample
from longctx.eval.infinitebench import load_infinitebench_hub
from longctx.eval.params import EvalConfig
from longctx.eval.sample import Sample


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("llama3")


def _hub_copy(folder):
    """A folder in the hub repo's layout: one {task}.jsonl per task, the columns differing between
    tasks as in the released files (kv_retrieval has no ``options``; math_find's answer is a number)."""
    rows = {
        "kv_retrieval": [{"id": 0, "context": "JSON data:\n{\"a\": \"b\"}", "input": "Key: \"a\"", "answer": ["b"]}],
        "longbook_choice_eng": [{"id": 0, "context": prose(30, 7), "input": "Who walked?", "answer": ["the sister"],
                                 "options": ["the parson", "the sister", "the cousin", "nobody"]}],
        "longbook_qa_eng": [{"id": 3, "context": prose(30, 8), "input": "What did she do?",
                             "answer": ["she walked", "walked"], "options": []}],
        "math_find": [{"id": 0, "context": "[1, 5, 3]", "input": "the largest", "answer": [5], "options": []}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    for task, task_rows in rows.items():
        (folder / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in task_rows))
    return folder


def test_hub_layout_loads_with_the_maintainers_features(tmp_path):
    folder = _hub_copy(tmp_path / "InfiniteBench")
    files = {f.stem: str(f) for f in sorted(folder.glob("*.jsonl"))}
    # what the hub does without features: the files' columns differ, datasets refuses
    with pytest.raises(datasets.exceptions.DatasetGenerationError):
        datasets.load_dataset("json", data_files=files, split="longbook_choice_eng", cache_dir=str(tmp_path / "c"))
    (mc,) = load_infinitebench_hub("longbook_choice_eng", 0, str(folder))
    assert mc.references == ["the sister", "B"] and "B. the sister" in mc.prompt
    (qa,) = load_infinitebench_hub("longbook_qa_eng", 0, str(folder))
    assert qa.references == ["she walked", "walked"] and qa.meta["id"] == 3
    with pytest.raises(Exception, match="no longbook_sum_eng.jsonl"):
        load_infinitebench_hub("longbook_sum_eng", 0, str(folder))


def official_middle_cut(tok, text: str, max_tokens: int) -> str:
    """InfiniteBench ``truncate_input`` (manner "middle"): the first and last ``max_tokens // 2``."""
    ids = tok.encode(text)
    if len(ids) <= max_tokens:
        return text
    split = max_tokens // 2
    return tok.decode(ids[:split]) + tok.decode(ids[-split:])


@pytest.mark.parametrize("limit", [1500, 1501])
def test_input_limit_cuts_in_the_middle_like_the_official_scripts(tok, limit):
    template, prefix = 30, " Answer:"
    sample = Sample("infinitebench", "longbook_qa_eng", 0, 0, "Read the book. " + prose(400, 3) + " Question: why?",
                    ["x"], 40, answer_prefix=prefix)
    n_prefix = len(tok.encode(prefix))
    # a 1M window, and a policy that would skip: the input limit still cuts, in the middle
    fit = fit_sample(sample, tok, 1_048_576, template, "skip", input_limit=limit)
    assert fit.sample is not None and fit.truncated_tokens > 0
    assert fit.sample.prompt == official_middle_cut(tok, sample.prompt, limit - template - n_prefix)
    assert fit.sample.n_tokens <= limit - template
    assert fit.sample.meta["input_limit"] == limit and fit.sample.meta["truncation"] == "middle"
    assert fit.sample.meta["cut_by"] == "input_limit"
    # no limit: a 1M window takes the whole prompt
    whole = fit_sample(sample, tok, 1_048_576, template, "skip")
    assert whole.sample is sample and whole.truncated_tokens == 0
    # a window smaller than the limit: the window's budget and the run's policy apply
    small = fit_sample(sample, tok, 1000, template, "skip", input_limit=limit)
    assert small.sample is None and "exceed the 1000-token window" in small.skipped_reason


def test_official_128k_is_the_default_and_zero_means_the_window():
    assert EvalConfig().infinitebench_input_limit == 128 * 1024  # eval_yarn_mistral.py: TRUNCATE_LEN


def test_generated_lengths_beyond_the_input_limit_are_refused():
    from longctx.core.config import ParamsError, from_mapping

    with pytest.raises(ParamsError, match="exceed infinitebench_input_limit 131072"):
        from_mapping(EvalConfig, {"benchmarks": ["infinitebench"], "infinitebench_lengths": [262144]})
    ok = from_mapping(EvalConfig, {"benchmarks": ["infinitebench"], "infinitebench_lengths": [262144],
                                   "infinitebench_input_limit": 0})
    assert ok.infinitebench_input_limit == 0
