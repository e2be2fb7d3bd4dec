"""End to end: a tiny random Llama (built here, nothing downloaded) through the local HF backend,
over all four benchmarks, with hub data from local files, an unreachable hub, a length beyond
the window and a prompt that must be truncated. (The embedded llama.cpp model through the
OpenAI-compatible backend runs end to end in tests/test_eval_notebook.py.)"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_eval_fixtures import corpus_dir, longbench_rows, mmlu_rows, prose, tiny_hf_model, write_jsonl

from longctx.core.config import from_mapping
from longctx.eval import hub
from longctx.eval.hf_backend import HFBackend
from longctx.eval.params import EvalConfig
from longctx.eval.results import COLUMNS, read_results
from longctx.eval.runner import open_backend, run_suite
from longctx.train.rope import RopeSettings


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    return tiny_hf_model(tmp, prose(1500, 11), max_positions=1024)


def test_hf_backend_full_suite(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is unreachable: hub-only sets are skipped
    hub.hub_reachable.cache_clear()
    long_row = longbench_rows("narrativeqa")[0] | {"context": prose(150, 12)}  # > the 1024-token window
    ib_dir = tmp_path / "InfiniteBench"  # the hub repo's layout; longbook_qa_chn is not in it
    write_jsonl(ib_dir / "longbook_qa_eng.jsonl", [{"id": 0, "context": prose(150, 13), "input": "Who walked?",
                                                   "answer": ["the sister"], "options": []}])
    cfg = from_mapping(EvalConfig, {
        "model_name": "tiny-llama", "backend": "hf", "hf_model_path": str(model_dir), "hf_dtype": "float32",
        "hf_device": "cpu", "attn_implementation": "eager",
        "benchmarks": ["ruler", "infinitebench", "longbench", "mmlu"],
        "ruler_tasks": ["niah_single_2", "vt", "qa_2"], "ruler_lengths": [512, 2048],
        "infinitebench_tasks": ["passkey", "longbook_qa_chn", "longbook_qa_eng"], "infinitebench_lengths": [512],
        "infinitebench_dir": str(ib_dir), "infinitebench_input_limit": 600,  # the official 128K, scaled down
        "longbench_tasks": ["narrativeqa"],
        "longbench_files": {"narrativeqa": str(write_jsonl(tmp_path / "nqa.jsonl", [long_row]))},
        "mmlu_dev_path": str(write_jsonl(tmp_path / "dev.jsonl", mmlu_rows("dev"))),
        "mmlu_test_path": str(write_jsonl(tmp_path / "test.jsonl", mmlu_rows("test"))),
        "mmlu_max_questions": 4, "n_samples": 2, "max_new_tokens_cap": 4,
        "haystack_corpus": str(corpus_dir(tmp_path)), "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache")})
    try:
        with open_backend(cfg) as backend:
            assert backend.context_window == 1024 and backend.template_tokens() > 0
            rows = run_suite(cfg, backend, "e2e")
    finally:
        hub.hub_reachable.cache_clear()
    got = {(r.benchmark, r.task, r.context_length): r for r in rows.itertuples()}
    assert got[("ruler", "niah_single_2", 512)].n_scored == 2
    assert "vt cannot be made in 512 tokens" in got[("ruler", "vt", 512)].skipped  # the worked example is longer
    assert "exceeds the model's 1024-token window" in got[("ruler", "vt", 2048)].skipped
    assert got[("ruler", "qa_2", 512)].skipped.startswith("skipped: not reachable (hotpotqa/hotpot_qa")
    assert got[("infinitebench", "passkey", 512)].n_scored == 2
    assert "has no longbook_qa_chn.jsonl" in got[("infinitebench", "longbook_qa_chn", 0)].skipped
    book = got[("infinitebench", "longbook_qa_eng", 0)]  # cut to the input limit, not to the 1024 window
    assert (book.n_scored, book.n_truncated, book.input_limit) == (1, 1, 600)
    assert book.mean_prompt_tokens <= 600 - backend.template_tokens() and "input cut to 600" in book.note
    assert got[("infinitebench", "passkey", 512)].input_limit == 600 and got[("mmlu", "mmlu", 0)].input_limit == ""
    lb = got[("longbench", "narrativeqa", 0)]
    assert (lb.n_scored, lb.n_truncated) == (1, 1) and "1 truncated (middle)" in lb.note
    assert (lb.n_available, lb.subsample, lb.truncation, lb.segmenter) == (1, "", "middle", "whitespace")
    mmlu = got[("mmlu", "mmlu", 0)]
    assert mmlu.n_scored == 4 and mmlu.metric == "accuracy (loglikelihood)" and 0 <= float(mmlu.score) <= 100

    table = read_results(tmp_path / "out" / "results.csv")
    assert list(table.columns) == COLUMNS and len(table) == len(rows)
    assert set(table["source"]) == {"measured"}
    preds = [json.loads(line) for line in (tmp_path / "out" / "e2e" / "predictions.jsonl").open()]
    ruler = [p for p in preds if p["benchmark"] == "ruler" and p.get("index") is not None]
    assert ruler and all(0 <= p["target_tokens"] - p["prompt_tokens"] <= 3 for p in ruler)
    cut = [p for p in preds if p["benchmark"] == "longbench"][0]
    assert cut["truncated_tokens"] > 0 and cut["meta"]["truncation"] == "middle"
    manifest = json.loads((tmp_path / "out" / "e2e" / "manifest.json").read_text())
    assert manifest["backend"]["rope_parameters"]["rope_theta"] == 10000.0
    # a second run appends to the same table
    assert pd.read_csv(tmp_path / "out" / "results.csv")["run_id"].unique().tolist() == ["e2e"]


def test_hf_backend_rope_override_travels_to_the_model(model_dir):
    backend = HFBackend(str(model_dir), dtype="float32", device="cpu", attn_implementation="eager",
                        rope=RopeSettings(type="default", theta=2.5e6), max_position_embeddings=4096)
    info = backend.describe()
    assert info["rope_parameters"] == {"rope_type": "default", "rope_theta": 2.5e6}
    assert backend.context_window == 4096
    assert backend.model.get_decoder().rotary_emb.__class__.__name__ == "RotaryEmbedding"


def test_embedded_server_runs_with_the_configured_threads(tmp_path):
    """``embedded_threads`` reaches the llama.cpp server it starts (the default, all cores but one,
    would be 1 on a 2-core machine; 3 differs from it everywhere we run)."""
    pytest.importorskip("xllamacpp")
    cfg = from_mapping(EvalConfig, {"embedded_threads": 3, "context_window": 2048,
                                    "output_dir": str(tmp_path / "out")})
    with open_backend(cfg) as backend:
        info = backend.describe()
    assert info["embedded_threads"] == 3 and info["context_window"] == 2048
