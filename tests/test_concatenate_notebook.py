"""Notebook 02 runs headless (papermill, through longctx.core.notebook.execute) on a tiny profile."""

import pytest
from fixtures.austen_qa import write_austen_qa

from longctx.core.notebook import execute


def test_notebook_02_tiny_profile(tmp_path):
    pytest.importorskip("papermill")
    qa = write_austen_qa(tmp_path / "qa.jsonl")
    stages = [{"name": "4K", "target_tokens": 4096, "n_samples": 4, "docs_per_sample": 1},
              {"name": "9K", "target_tokens": 9000, "n_samples": 3, "docs_per_sample": None}]
    rec = execute("notebooks/02_concatenate.ipynb",
                  parameters={"qa_path": str(qa), "output_dir": str(tmp_path / "out"), "stages": stages,
                              "seed": 1},
                  output=tmp_path / "02_concatenate.ipynb", timeout=300)
    assert set(rec["stages"]) == {"4K", "9K"}
    for spec in stages:
        got = rec["stages"][spec["name"]]
        assert got["n_samples"] == spec["n_samples"]
        assert 0.95 * spec["target_tokens"] <= got["max_tokens"] <= spec["target_tokens"]
        assert got["fill_min"] >= 0.95
        assert 0.05 < got["answer_fraction_mean"] < 0.8
        assert set(got["questions"]) == {"global", "section", "chunk", "diverse", "revisit"}
        assert all(0 <= v["kept"] <= v["planned"] for v in got["questions"].values())
        assert got["documents_cut"] >= 0
    assert rec["loader_lengths_equal"] is True
    assert rec["dropped_qa_bad_grounding"] == 0
    assert rec["first_sample_starts_with"] == "<|begin_of_text|>"
    assert rec["windows"] == 0  # the fixture's documents are short: no windows
    # the paper-scale keep table of bench/results (issue 19 §4): both corpora, all four stages
    keep = rec["keep_at_paper_scale"]
    assert {(r["corpus"], r["stage"]) for r in keep} == {
        (c, s) for c in ("100K-median books", "250K-median books") for s in ("180K", "350K", "650K", "1M")}


def test_notebook_02_rejects_unknown_parameter(tmp_path):
    pytest.importorskip("papermill")
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="unknown key 'n_divers'"):
        execute("notebooks/02_concatenate.ipynb", parameters={"n_divers": 3},
                output=tmp_path / "bad.ipynb", timeout=120)
