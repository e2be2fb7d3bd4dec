"""Notebook 01 executed headless by papermill on the tiny profile; asserts on recorded values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from papermill.exceptions import PapermillExecutionError

from longctx.core.notebook import execute

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_generate_qa.ipynb"

# ~1 min on an idle 2-core machine (one 512-token section), several beside two CPU-bound processes
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_notebook_01_runs_on_the_tiny_profile(tmp_path, capsys):
    params = yaml.safe_load((ROOT / "params" / "test" / "01_generate_qa.yaml").read_text())
    params["output_dir"] = str(tmp_path / "out")
    rec = execute(NOTEBOOK, params, output=tmp_path / "01.ipynb", timeout=2100, stream_output=True)
    # ./dev demo streams the notebook's progress lines to the terminal as they are printed
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[QA generation]")]
    assert progress and progress[-1].startswith("[QA generation] 1 documents done,") and "finished in" in progress[-1]
    assert rec["documents"] == 1
    # SmolLM2 may keep no diverse QA of two (the manifest counts them as shortfall)
    assert 0 < rec["hierarchical_per_document"][0] <= 2 and rec["diverse_per_document"][0] <= 2
    assert "global" in rec["levels"]
    assert rec["chunks_cover_document"] is True
    assert rec["max_chunk_tokens"] <= 256
    assert Path(rec["qa_path"]).is_file() and (tmp_path / "out" / "manifest.json").is_file()


def test_notebook_01_rejects_an_unknown_injected_parameter(tmp_path):
    with pytest.raises(PapermillExecutionError, match="unknown key 'n_divers'"):
        execute(NOTEBOOK, {"n_divers": 3}, output=tmp_path / "bad.ipynb", timeout=300)
