"""Figures and tables of the paper's comparisons, from a results table written here (tmp dir)."""

from __future__ import annotations

import pandas as pd
import pytest

from longctx.eval.results import append_rows, read_reported
from longctx.eval.figures import FiguresConfig, load_tables, make_figures, ruler_table, task_table
from longctx.core.notebook import execute


def _results(path):
    rows = []
    for model, base in (("ours-tiny", 80.0), ("baseline-tiny", 50.0)):
        for length, drop in ((4096, 0), (16384, 10), (65536, 30)):
            for task in ("niah_single_1", "vt"):
                rows.append(dict(run_id="r1", model=model, benchmark="ruler", task=task, context_length=length,
                                 n_samples=2, n_scored=2, score=base - drop, metric="string_match_all"))
        rows.append(dict(run_id="r1", model=model, benchmark="ruler", task="qa_1", context_length=4096,
                         n_samples=0, skipped="skipped: not reachable (rajpurkar/squad_v2: offline)"))
        for task, score in (("passkey", base + 10), ("kv_retrieval", base - 20)):
            rows.append(dict(run_id="r1", model=model, benchmark="infinitebench", task=task,
                             context_length=4096, n_samples=2, n_scored=2, score=score, metric="official",
                             input_limit=131072 if model == "baseline-tiny" else ""))
        rows.append(dict(run_id="r1", model=model, benchmark="mmlu", task="mmlu", context_length=0,
                         n_samples=4, n_scored=4, score=base - 10, metric="accuracy"))
    # a later run of the same group replaces the earlier score
    rows.append(dict(run_id="r2", model="ours-tiny", benchmark="ruler", task="vt", context_length=65536,
                     n_samples=2, n_scored=2, score=60.0, metric="string_match_all"))
    append_rows(path, rows)
    return path


def test_reported_table_is_labelled_and_holds_the_papers_numbers():
    reported = read_reported()
    assert set(reported["source"]) == {"reported"}
    ours = reported.set_index(["model", "benchmark", "context_length"])["score"]
    # the numbers of /work/shared/PAPER.md (the paper's summary), at the training stages' lengths
    assert ours[("ours-1m", "ruler", 1048576)] == 62.95
    assert ours[("ours-350k", "ruler", 358400)] == 71.15
    assert ours[("Llama-3.1-8B-Instruct", "mmlu", 0)] == 68.21
    assert ours[("ours-1m", "mmlu", 0)] == 65.08
    ib = reported[reported["benchmark"] == "infinitebench"].set_index("model")["score"].to_dict()
    assert ib == {"ours-1m": 54.8, "ours-180k": 59.45, "ours-350k": 59.26, "Llama-3.1-8B-Instruct": 51.31,
                  "Llama-3-8B-Instruct-Gradient-1048k": 41.04}
    assert (reported["reference"] != "").all()  # every number says where it comes from


def test_tables_average_tasks_and_keep_the_latest_run(tmp_path):
    cfg = FiguresConfig(results=[str(_results(tmp_path / "results.csv"))], output_dir=str(tmp_path / "fig"))
    df = load_tables(cfg)
    ruler = ruler_table(df).set_index(["model", "context_length"])
    assert ruler.loc[("ours-tiny", 4096), "score"] == 80.0  # the skipped qa_1 row does not count
    assert ruler.loc[("ours-tiny", 65536), "score"] == pytest.approx((50.0 + 60.0) / 2)  # r2 replaced r1's vt
    assert ruler.loc[("ours-1m", 1048576), "source"] == "reported"
    ib = task_table(df, "infinitebench")
    assert list(ib.columns) == ["Retrieve.KV", "Retrieve.PassKey", "average"]
    assert ib.loc["ours-tiny [own window]", "average"] == pytest.approx((90.0 + 60.0) / 2)
    assert ib.loc["baseline-tiny [cut to 128K]", "average"] == pytest.approx((60.0 + 30.0) / 2)
    assert ib.loc["ours-1m (reported)", "average"] == 54.8


def test_length_labels_keep_the_trainings_1m_apart_from_ten_to_the_six():
    from longctx.eval.figures import _k

    assert [_k(n) for n in (4096, 131072, 184320, 358400, 665600, 1048576, 1000000)] == [
        "4K", "128K", "180K", "350K", "650K", "1M", "10^6"]


def test_make_figures_writes_png_and_pdf_to_the_given_dir(tmp_path):
    cfg = FiguresConfig(results=[str(_results(tmp_path / "results.csv"))], output_dir=str(tmp_path / "fig"))
    out = make_figures(cfg)
    assert set(out["files"]) == {"ruler_by_length", "infinitebench_tasks", "mmlu"}  # no LongBench rows
    for paths in out["files"].values():
        assert sorted(p.rsplit(".", 1)[1] for p in paths) == ["pdf", "png"]
        for p in paths:
            with open(p, "rb") as handle:
                assert handle.read(4) in (b"\x89PNG", b"%PDF")
    no_reported = make_figures(FiguresConfig(results=cfg.results, include_reported=False,
                                             output_dir=str(tmp_path / "fig2"), formats=["png"]))
    assert set(no_reported["ruler"]["source"]) == {"measured"}


def test_notebook_05_tiny_profile(tmp_path):
    pytest.importorskip("papermill")
    results = _results(tmp_path / "results.csv")
    rec = execute("notebooks/05_figures.ipynb",
                  parameters={"results": [str(results)], "output_dir": str(tmp_path / "fig")},
                  output=tmp_path / "05_figures.ipynb", timeout=300)
    assert set(rec["files"]) == {"ruler_by_length", "infinitebench_tasks", "mmlu"}
    assert all(p.startswith(str(tmp_path)) for paths in rec["files"].values() for p in paths)
    assert rec["n_reported_rows"] == len(read_reported())
    assert rec["n_measured_rows"] == len(pd.read_csv(results)) - 1  # r2 replaced one r1 row
    assert rec["ruler_points"] == 8 and "ours-tiny" in rec["models"]


def test_a_missing_results_table_is_an_error_naming_it(tmp_path, capsys):
    """``python -m longctx.figures`` with a results table that does not exist (a checkpoint not
    evaluated, a mistyped path) exits non-zero naming it, and draws nothing; a table with no
    scored row is an error too, not a figure of the reported numbers alone."""
    import yaml

    from longctx.eval.figures import main

    there = _results(tmp_path / "ours" / "results.csv")
    params = tmp_path / "05.yaml"
    params.write_text(yaml.safe_dump({"results": [str(there), str(tmp_path / "ours-1m" / "results.csv")],
                                      "output_dir": str(tmp_path / "fig"), "formats": ["png"]}))
    assert main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert f"results table(s) not found: {tmp_path / 'ours-1m' / 'results.csv'}" in err and str(there) not in err
    assert not (tmp_path / "fig").exists()
    empty = tmp_path / "empty" / "results.csv"
    append_rows(empty, [dict(run_id="r", model="m", benchmark="ruler", task="vt", context_length=4096, n_samples=0,
                             skipped="skipped: not reachable")])
    params.write_text(yaml.safe_dump({"results": [str(empty)], "output_dir": str(tmp_path / "fig")}))
    assert main(["--params", str(params)]) == 1 and "no scored row" in capsys.readouterr().err
    params.write_text(yaml.safe_dump({"results": [str(there)], "output_dir": str(tmp_path / "fig"), "formats": ["png"]}))
    assert main(["--params", str(params)]) == 0 and (tmp_path / "fig" / "ruler_by_length.png").is_file()
