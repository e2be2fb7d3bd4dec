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


def _paper_eval_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted((ROOT / "params" / "paper").glob("04_evaluate*.yaml"))}


def test_paper_evaluation_covers_the_papers_comparisons():
    """One params file per checkpoint and baseline, each with the benchmarks the paper ran for it
    (/work/shared/PAPER.md), its own model name and output folder, and a serve command whose
    served name, window and (zero-shot) RoPE match the file and the training params."""
    import json
    import re

    from longctx.eval.params import EvalConfig
    from longctx.eval.results import read_reported
    from longctx.train.config import TrainConfig

    train = load_params(TrainConfig, ROOT / "params" / "paper" / "03_train.yaml")
    windows = {s.name: s.seq_len for s in train.stages}
    cfgs = {stem: load_params(EvalConfig, path) for stem, path in _paper_eval_files().items()}
    by_model = {c.model_name: c for c in cfgs.values()}
    assert len(by_model) == len(cfgs) == len({c.output_dir for c in cfgs.values()}) == 7
    need = {"ours-180k": {"infinitebench"}, "ours-350k": {"ruler", "infinitebench"}, "ours-650k": set(),
            "ours-1m": {"ruler", "infinitebench", "longbench", "mmlu"},
            "Llama-3.1-8B-Instruct": {"infinitebench", "mmlu"}, "Llama-3.1-8B-Instruct-zero-shot-1M": {"ruler"},
            "Llama-3-8B-Instruct-Gradient-1048k": {"ruler", "infinitebench"}}
    for model, benchmarks in need.items():
        assert benchmarks <= set(by_model[model].benchmarks), model
    assert by_model["ours-350k"].ruler_lengths == [windows["350K"]]
    for model in ("ours-1m", "Llama-3.1-8B-Instruct-zero-shot-1M", "Llama-3-8B-Instruct-Gradient-1048k"):
        assert max(by_model[model].ruler_lengths) == windows["1M"] == 1048576
    assert set(read_reported()["model"]) <= set(by_model), "every reported model has a params file of its name"
    for stem, path in _paper_eval_files().items():
        cfg, text = cfgs[stem], path.read_text()
        assert cfg.backend == "openai" and cfg.infinitebench_input_limit == 131072
        served = re.search(r"--served-model-name (\S+)", text).group(1)
        window = int(re.search(r"--max-model-len (\d+)", text).group(1))
        assert served == cfg.llm_model == cfg.model_name, stem
        if "ruler" in cfg.benchmarks:
            assert max(cfg.ruler_lengths) <= window, stem
        stage = {"ours-180k": "180K", "ours-350k": "350K", "ours-650k": "650K", "ours-1m": "1M"}.get(cfg.model_name)
        if stage:
            assert f"runs/paper/03_train/{stage}/hf" in text and window == windows[stage], stem
    overrides = re.search(r"--hf-overrides '([^']+)'", _paper_eval_files()["04_evaluate_zero_shot_1m"].read_text())
    rope = json.loads(overrides.group(1))
    one_m = next(s for s in train.stages if s.name == "1M")
    assert rope["rope_parameters"]["rope_theta"] == one_m.rope.theta and rope["max_position_embeddings"] == 1048576
    assert rope["rope_parameters"]["rope_type"] == one_m.rope.type == "default"
