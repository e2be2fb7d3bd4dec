"""Notebook 03 runs headless: demo profile trains with sp=2 on CPU, then plots that run's logs in
monitor mode (training nothing, as for a cluster run); paper profile prints the plan."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml
from longctx.core.notebook import execute

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_train.ipynb"
TINY = {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}


def write_stage2_samples(folder: Path) -> None:
    """A small stage-2 output folder made with the stage-2 writer (one parquet file per stage)."""
    from longctx.concat.samples import SampleWriter

    rng = np.random.default_rng(1)
    for name, length in [("s1", 48), ("s2", 80)]:
        with SampleWriter(folder / f"{name}.parquet") as writer:
            for i in range(4):
                ids = rng.integers(1, 256, length - i)
                writer.write(ids, labels=np.where(rng.random(ids.size) < 0.25, ids, -100))


def test_demo_profile_trains_with_sp2(tmp_path):
    params = yaml.safe_load((ROOT / "params/test/03_train.yaml").read_text())
    write_stage2_samples(tmp_path / "concatenate")
    for stage in params["stages"]:
        stage["samples"] = str(tmp_path / "concatenate")
    params["output_dir"] = str(tmp_path / "train")
    records = execute(NOTEBOOK, params, output=tmp_path / "03_demo.ipynb", timeout=300)
    assert records["profile"] == "demo" and records["stages"] == ["s1", "s2"]
    assert records["sp"] == [2, 2] and records["fits"] is True
    assert records["steps"] == {"s1": 2, "s2": 2}
    assert len(records["losses"]) == 4 and all(math.isfinite(x) and 0 < x < 10 for x in records["losses"])
    assert records["sbatch_jobs"] == 0
    assert (tmp_path / "train/s2/final/trainer_state.json").is_file()
    # monitor: the same run's logs read back and plotted, nothing trained (as for a cluster run)
    from longctx.train.log import read_log

    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "train").rglob("*") if p.is_file()}
    watched = execute(NOTEBOOK, {**params, "monitor": True}, output=tmp_path / "03_monitor.ipynb", timeout=300)
    rows = [r for s in ("s1", "s2") for r in read_log(tmp_path / f"train/{s}/train_log.csv")]
    assert watched["monitor"] is True and watched["steps"] == {"s1": 2, "s2": 2} and watched["sbatch_jobs"] == 0
    assert watched["losses"] == records["losses"] == [r["loss"] for r in rows]
    assert watched["mfu"] == [r["mfu"] for r in rows] and all(0 < m < 1e-3 for m in watched["mfu"])
    assert watched["peak_mem_gb"] == [r["peak_mem_gb"] for r in rows]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "train").rglob("*") if p.is_file()} == before


def test_demo_profile_without_stage2_output_says_run_02(tmp_path):
    import papermill

    try:
        execute(NOTEBOOK, {"tiny": TINY, "output_dir": str(tmp_path / "train"),
                           "stages": [{"name": "s1", "samples": str(tmp_path / "missing"), "seq_len": 64, "sp": 2}]},
                output=tmp_path / "03_missing.ipynb", timeout=120)
    except papermill.PapermillExecutionError as err:
        assert "run notebooks/02_concatenate.ipynb" in str(err)
    else:
        raise AssertionError("the notebook ran without stage-2 samples")


def test_paper_profile_prints_job_chain_and_memory(tmp_path):
    paper = yaml.safe_load((ROOT / "params/paper/03_train.yaml").read_text())
    paper["output_dir"] = str(tmp_path / "paper")
    records = execute(NOTEBOOK, paper, output=tmp_path / "03_paper.ipynb", timeout=120)
    assert records["profile"] == "paper" and records["stages"] == ["180K", "350K", "650K", "1M"]
    assert records["sbatch_jobs"] == 4 and records["fits"] is True
    assert all(20 < gib < 80 for gib in records["est_gib"]) and records["sp"] == [8, 8, 8, 16]
    assert records["losses"] == []
