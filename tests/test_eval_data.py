"""Hub data sets through ``datasets`` on local files shaped like the real ones (every row by
default, a marked random subsample on request), the "skipped: not reachable" path, the explicit
truncation policy, and the results table's provenance columns."""

from __future__ import annotations

import pytest
from test_eval_fixtures import (infinitebench_rows, longbench_rows, mmlu_rows, prose, squad_rows,
                                write_jsonl)

from longctx.eval import hub
from longctx.eval.fit import fit_sample, truncate_tokens
from longctx.eval.infinitebench import load_infinitebench_hub
from longctx.eval.longbench import load_longbench
from longctx.eval.metrics import ZH_SEGMENTER
from longctx.eval.mmlu import load_mmlu
from longctx.eval.provenance import data_provenance, scoring_provenance
from longctx.eval.results import COLUMNS, append_rows, read_results
from longctx.eval.ruler_qa import qa_from_squad
from longctx.eval.sample import Sample
from longctx.core.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("llama3")


def test_unreachable_hub_is_reported_not_raised(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    try:
        with pytest.raises(hub.Unavailable, match=r"^skipped: not reachable \(cais/mmlu: HF_HUB_OFFLINE"):
            hub.load_rows("cais/mmlu", "all", "test")
        with pytest.raises(hub.Unavailable, match="skipped: local file"):
            hub.load_rows("x/y", local_path="/nonexistent.jsonl")
    finally:
        hub.hub_reachable.cache_clear()


def test_squad_reader_keeps_answerable_and_article_neighbours():
    qas, docs = qa_from_squad(squad_rows())
    assert len(qas) == 12 and len(docs) == 12  # unanswerable rows dropped, paragraphs deduplicated
    assert all(len(q["more"]) == 2 for q in qas)  # the other paragraphs of the same article


def test_infinitebench_hub_rows(tmp_path):
    path = write_jsonl(tmp_path / "mc.jsonl", infinitebench_rows("longbook_choice_eng"))
    (s,) = load_infinitebench_hub("longbook_choice_eng", 5, str(path))
    assert s.references == ["the sister", "B"]  # InfiniteBench's [text, letter]
    assert "B. the sister" in s.prompt and s.context_length == 0 and s.max_new_tokens == 40


def test_longbench_rows(tmp_path):
    (s,) = load_longbench("trec", 3, str(write_jsonl(tmp_path / "trec.jsonl", longbench_rows("trec"))))
    assert s.chat is False and s.meta["all_classes"] == ["Description", "Entity", "Location"]
    (q,) = load_longbench("hotpotqa", 3, str(write_jsonl(tmp_path / "h.jsonl", longbench_rows("hotpotqa"))))
    assert q.chat is True and q.max_new_tokens == 32 and "Where is it?" in q.prompt


def test_mmlu_five_shot_prompt(tmp_path):
    dev = write_jsonl(tmp_path / "dev.jsonl", mmlu_rows("dev"))
    test = write_jsonl(tmp_path / "test.jsonl", mmlu_rows("test"))
    samples = load_mmlu(5, 4, str(dev), str(test))
    assert len(samples) == 4 and {s.meta["subject"] for s in samples} == {"astronomy", "virology"}
    prompt = samples[0].prompt
    assert prompt.startswith("The following are multiple choice questions (with answers) about astronomy.")
    assert prompt.count("Answer:") == 6 and prompt.endswith("D. delta\nAnswer:")
    assert samples[0].chat is False and samples[0].choices == ["A", "B", "C", "D"]


@pytest.mark.parametrize("policy", ["middle", "left", "right"])
def test_truncation_policies(policy, tok):
    text = "START " + prose(60, 5) + " END"
    cut, removed = truncate_tokens(tok, text, 100, policy)
    assert len(tok.encode(cut)) <= 100 and removed == len(tok.encode(text)) - len(tok.encode(cut))
    assert cut.startswith("START") == (policy in ("middle", "right"))
    assert cut.endswith("END") == (policy in ("middle", "left"))


def test_fit_sample_reports_truncation_and_skip(tok):
    sample = Sample("longbench", "narrativeqa", 0, 0, "Q? " + prose(80, 6), ["x"], 64, answer_prefix=" A:")
    n = len(tok.encode(sample.prompt)) + len(tok.encode(" A:"))
    ok = fit_sample(sample, tok, n + 64 + 30, 30, "middle")
    assert ok.sample is sample and ok.truncated_tokens == 0
    cut = fit_sample(sample, tok, 400, 30, "middle")
    assert cut.sample.n_tokens <= 400 - 64 - 30 and cut.truncated_tokens > 0
    assert cut.sample.meta["truncation"] == "middle" and cut.sample.meta["original_tokens"] == n
    skipped = fit_sample(sample, tok, 400, 30, "skip")
    assert skipped.sample is None and "exceed the 400-token window" in skipped.skipped_reason
    none = fit_sample(sample, tok, 90, 30, "middle")
    assert none.sample is None and "leave no room" in none.skipped_reason


def _numbered_rows(n: int) -> list[dict]:
    return [{"input": f"question {i}?", "context": prose(3, i), "answers": [f"answer {i}"], "length": 30,
             "dataset": "hotpotqa", "language": "en", "all_classes": None, "_id": f"x{i}"} for i in range(n)]


def test_hub_sets_default_to_every_row_and_a_subsample_says_so(tmp_path):
    path = str(write_jsonl(tmp_path / "h.jsonl", _numbered_rows(12)))
    full = load_longbench("hotpotqa", 0, path)
    assert [s.references for s in full] == [[f"answer {i}"] for i in range(12)]
    assert full[0].meta["n_available"] == 12 and full[0].meta["subsample"] == ""
    assert data_provenance(full) == {"n_available": 12, "subsample": ""}
    assert load_longbench("hotpotqa", 50, path)[0].meta["subsample"] == ""  # more than there is: all
    part = load_longbench("hotpotqa", 4, path, seed=1)
    picked = [int(s.references[0].split()[1]) for s in part]
    assert len(picked) == 4 and picked == sorted(picked) and picked != [0, 1, 2, 3]  # random, in order
    assert [s.references for s in load_longbench("hotpotqa", 4, path, seed=1)] == [s.references for s in part]
    assert part[0].meta["subsample"] == "subsample: 4 of 12 rows, random (seed 1)"
    ib = load_infinitebench_hub("longbook_choice_eng", 0, str(write_jsonl(
        tmp_path / "mc.jsonl", infinitebench_rows("longbook_choice_eng"))))
    assert data_provenance(ib) == {"n_available": 1, "subsample": ""}


def test_results_table_upgrades_an_older_header(tmp_path):
    old_columns = ["run_id", "model", "benchmark", "task", "context_length", "n_samples", "n_scored",
                   "n_truncated", "n_skipped", "score", "metric", "mean_prompt_tokens", "skipped", "source", "note"]
    path = tmp_path / "results.csv"
    path.write_text(",".join(old_columns) + "\nold,m,ruler,vt,4096,2,2,0,0,50.0,string_match_all,100,,measured,\n")
    assert read_results(path)["segmenter"].tolist() == [""]  # read under the current columns
    append_rows(path, [dict(run_id="new", model="m", benchmark="longbench", task="vcsum", n_samples=1,
                            n_available=1, truncation="middle", **scoring_provenance("longbench", "vcsum"))])
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    table = read_results(path)
    assert table["run_id"].tolist() == ["old", "new"] and table["score"].tolist()[0] == 50.0
    assert table["segmenter"].tolist() == ["", ZH_SEGMENTER] and table["scorer"].tolist()[1].startswith("rouge ")
    assert table["truncation"].tolist() == ["", "middle"]
