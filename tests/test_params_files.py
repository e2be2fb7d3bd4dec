"""Every committed params file parses into its stage's dataclass."""

from __future__ import annotations

from pathlib import Path

import pytest

from longctx.core.config import load_params
from longctx.core.stages import STAGES, params_class

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "params").glob("*/*.yaml"))


def stage_of(path: Path) -> str | None:
    """``04_evaluate`` for ``04_evaluate.yaml`` and for variants such as ``04_evaluate_zero_shot.yaml``."""
    for stage in STAGES:
        if path.stem == stage or path.stem.startswith(stage + "_"):
            return stage
    return None


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_params_file_is_valid(path):
    stage = stage_of(path)
    assert stage, f"{path} names no stage; known: {sorted(STAGES)}"
    load_params(params_class(stage), path)


def test_each_stage_has_demo_and_paper_profiles():
    for stage in STAGES:
        for profile in ("demo", "paper"):
            assert (ROOT / "params" / profile / f"{stage}.yaml").is_file(), f"missing params/{profile}/{stage}.yaml"
