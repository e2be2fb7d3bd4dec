"""Notebook 01's parameter cell rejects what GenerateParams does not know.

The notebook's full run is the reference run of tests/test_generate_e2e.py (executed headless by
papermill against the embedded llama.cpp server; its records and streamed progress are checked
there): one llama.cpp run serves both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from papermill.exceptions import PapermillExecutionError

from longctx.core.notebook import execute

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_generate_qa.ipynb"


def test_notebook_01_rejects_an_unknown_injected_parameter(tmp_path):
    with pytest.raises(PapermillExecutionError, match="unknown key 'n_divers'"):
        execute(NOTEBOOK, {"n_divers": 3}, output=tmp_path / "bad.ipynb", timeout=300)
