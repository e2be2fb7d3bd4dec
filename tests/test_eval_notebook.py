"""Notebook 04 headless (papermill) on a tiny profile: the embedded llama.cpp SmolLM2 evaluated end
to end through the OpenAI-compatible backend, with the hub unreachable."""

from __future__ import annotations

import pytest
from test_eval_fixtures import corpus_dir

from longctx.eval.results import read_results
from longctx.core.notebook import execute


def test_notebook_04_embedded_llamacpp_tiny_profile(tmp_path, monkeypatch, capsys):
    pytest.importorskip("papermill")
    pytest.importorskip("xllamacpp")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the kernel inherits it: hub data sets are skipped
    out = tmp_path / "out"
    rec = execute("notebooks/04_evaluate.ipynb", parameters={
        "ruler_tasks": ["niah_single_1", "qa_1"], "ruler_lengths": [512],
        "infinitebench_tasks": ["passkey"], "infinitebench_lengths": [512], "n_samples": 1,
        "max_new_tokens_cap": 8, "embedded_threads": 1, "haystack_corpus": str(corpus_dir(tmp_path)),
        "output_dir": str(out), "cache_dir": str(tmp_path / "cache"), "run_id": "nb04"},
        output=tmp_path / "04_evaluate.ipynb", timeout=600, stream_output=True)
    assert "[evaluation] 3/3 task groups" in capsys.readouterr().err  # progress reaches the terminal
    assert rec["run_id"] == "nb04" and rec["n_rows"] == 3 and rec["n_scored_rows"] == 2
    assert rec["skipped"]["ruler/qa_1@512"].startswith("skipped: not reachable (rajpurkar/squad_v2")
    assert rec["context_window"] == 8192 and rec["template_tokens"] > 0
    assert rec["embedded_threads"] == 1  # the parameter reached the server
    assert rec["max_prompt_over_budget"] <= 0 and rec["max_budget_slack"] <= 3
    assert set(rec["scores"]) == {"ruler/niah_single_1@512", "infinitebench/passkey@512"}
    table = read_results(out / "results.csv")
    assert len(table) == 3 and set(table["model"]) == {"SmolLM2-135M-Instruct"}


def test_notebook_04_rejects_unknown_parameter(tmp_path):
    pytest.importorskip("papermill")
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="unknown key 'ruler_lenghts'"):
        execute("notebooks/04_evaluate.ipynb", parameters={"ruler_lenghts": [512]},
                output=tmp_path / "bad.ipynb", timeout=120)
