"""One setting moves every output: with LONGCTX_RUNS set, every stage's paths under ``runs/``
(outputs, caches, corpus shards, the stages' inputs from earlier stages) resolve under it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from longctx.core.config import load_params, project_root, resolve_path, runs_root
from longctx.core.stages import STAGES, params_class

ROOT = Path(__file__).resolve().parents[1]


def _run_paths(cfg) -> dict[str, str]:
    """Every str (or list-of-str item, or nested dataclass field) of ``cfg`` that names a path under runs/."""
    found = {}
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if dataclasses.is_dataclass(item):
                found.update({f"{field.name}[{i}].{k}": v for k, v in _run_paths(item).items()})
            elif isinstance(item, str) and item.startswith("runs/"):
                found[f"{field.name}[{i}]" if isinstance(value, list) else field.name] = item
    return found


@pytest.mark.parametrize("profile", ["demo", "paper"])
def test_every_stage_resolves_its_outputs_under_the_run_root(profile, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    seen = set()
    for stage in STAGES:
        path = ROOT / "params" / profile / f"{stage}.yaml"
        if not path.is_file():
            continue
        cfg = load_params(params_class(stage), path)
        paths = _run_paths(cfg)
        monkeypatch.delenv("LONGCTX_RUNS", raising=False)
        assert all(resolve_path(p) == project_root() / p for p in paths.values())  # unset: as before
        monkeypatch.setenv("LONGCTX_RUNS", str(scratch))
        for key, value in paths.items():
            assert resolve_path(value) == scratch / value.removeprefix("runs/"), f"{stage}: {key}"
        if paths:
            seen.add(stage)
    # the stages that write (and read) under runs/: all but the figures, which go to figures/
    assert seen >= {"01_generate_qa", "02_concatenate", "03_train", "04_evaluate"}


def test_the_stages_own_folders_follow_it(tmp_path, monkeypatch):
    """Not only the params: the folders each stage's code derives from them."""
    from longctx.generate.params import GenerateParams
    from longctx.generate.stage import shard_dir
    from longctx.generate.status import run_root
    from longctx.train.config import TrainConfig
    from longctx.train.stage import stage_dir

    monkeypatch.setenv("LONGCTX_RUNS", str(tmp_path / "s"))
    gen = load_params(GenerateParams, ROOT / "params" / "paper" / "01_generate_qa.yaml", {"shard_index": 3, "shard_count": 64})
    assert shard_dir(gen) == tmp_path / "s" / "paper" / "01_generate_qa" / "shards" / "00003-of-00064"
    assert run_root(gen, dry_run=True) == tmp_path / "s" / "paper" / "01_generate_qa" / "dry-run"
    train = load_params(TrainConfig, ROOT / "params" / "paper" / "03_train.yaml")
    assert stage_dir(train, train.stages[0]).parent == tmp_path / "s" / "paper" / "03_train"
    assert runs_root() == tmp_path / "s"
    monkeypatch.setenv("LONGCTX_RUNS", "elsewhere")  # relative: to the project root
    assert runs_root() == project_root() / "elsewhere"
    assert resolve_path("data/austen") == project_root() / "data" / "austen"  # inputs stay where they are
