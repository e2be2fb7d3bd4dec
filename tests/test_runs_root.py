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
    # every stage writes (and reads) under runs/, the figures too
    assert seen >= {"01_generate_qa", "02_concatenate", "03_train", "04_evaluate", "05_figures"}


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


# --------------------------------------------------------------------------- the launchers and job scripts


def _under_repo_runs(text: str) -> list[str]:
    """Words of ``text`` naming a path under the repository's runs/ (relative or absolute)."""
    import re
    import shlex

    words = [w for line in text.splitlines() for w in shlex.split(line.replace("'\\''", ""), comments=True)]
    parts = [p for w in words for p in re.split(r"[=,:]", w)]
    return [p for p in parts if p.startswith("runs/") or p.startswith(str(ROOT / "runs"))]


def test_every_launcher_renders_its_jobs_under_the_run_root(tmp_path, monkeypatch, capsys):
    """With LONGCTX_RUNS set, the chains the three launchers print, run by bash as a user runs them
    (sbatch recorded, not submitted), name no path under the repository's runs/: logs, params,
    checkpoints to serve; and the log folder is made under the run root."""
    import os
    import subprocess

    from longctx.eval import launch as eval_launch
    from longctx.generate.launch import sbatch_commands as generate_lines
    from longctx.generate.params import GenerateParams
    from longctx.train.config import TrainConfig
    from longctx.train.launch import sbatch_commands as train_lines

    scratch = tmp_path / "scratch"
    monkeypatch.setenv("LONGCTX_RUNS", str(scratch))
    gen_path = ROOT / "params" / "paper" / "01_generate_qa.yaml"
    gen = load_params(GenerateParams, gen_path)
    train_path = ROOT / "params" / "paper" / "03_train.yaml"
    chains = {
        "generate (vLLM)": generate_lines(gen, gen_path, shards=4, model="/models/qwen", servers=2),
        "generate (API)": generate_lines(load_params(GenerateParams, gen_path, {"llm_base_url": "https://api.x/v1"}),
                                         gen_path, shards=4, api=True, servers=2),
        "train": train_lines(load_params(TrainConfig, train_path), train_path),
    }
    assert eval_launch.main(["--params", "params/paper/04_evaluate.yaml", "--after-train", "params/paper/03_train.yaml",
                             "--checkpoint", "runs/paper/03_train/1M/hf=again", "--shards", "2"]) == 0
    chains["evaluate"] = capsys.readouterr().out.splitlines()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch.args"
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\nprintf "%q " "$@" >> {record}; echo >> {record}; echo 17\n')
    (bin_dir / "sbatch").chmod(0o755)
    env_file = tmp_path / "cluster.env"
    env_file.write_text(f"LONGCTX_RUNS={scratch}\n")
    for name, lines in chains.items():
        record.write_text("")
        script = "\n".join(line.replace("source slurm/cluster.env", f"source {env_file}") for line in lines)
        assert _under_repo_runs(script.replace("${LONGCTX_RUNS:-runs}", "$LONGCTX_RUNS")) == [], name  # but the fallback
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        env.pop("LONGCTX_RUNS")  # as a user's shell: the setting comes from cluster.env
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        submitted = record.read_text()
        assert submitted.count("--output=") == len(submitted.splitlines()) > 0, f"{name}: a job without --output"
        assert _under_repo_runs(submitted) == [], f"{name}: {submitted}"
        assert f"--output={scratch}/slurm/" in submitted
    assert (scratch / "slurm").is_dir()


@pytest.mark.parametrize("script,env", [
    ("train.sbatch", {"PARAMS": "params/paper/03_train.yaml", "STAGE": "180K", "SLURM_JOB_ID": "5"}),
    ("evaluate.sbatch", {"MODEL": "runs/paper/03_train/1M/hf", "SERVER": "transformers", "SLURM_JOB_ID": "6"}),
    ("generate_vllm.sbatch", {"SERVER": "llamacpp", "SLURM_ARRAY_TASK_ID": "1", "SHARDS": "2", "SLURM_ARRAY_JOB_ID": "7"}),
    ("generate.sbatch", {"SLURM_ARRAY_TASK_ID": "1", "SHARDS": "2"}),
])
def test_every_job_script_writes_under_the_run_root(script, env, tmp_path):
    """Each job script's dry run (the commands, server log and stop file the job would use) with
    LONGCTX_RUNS set names no path under the repository's runs/; a checkpoint named runs/... is
    served from the run root."""
    import os
    import subprocess
    import sys

    scratch = tmp_path / "scratch"
    (scratch / "paper" / "03_train" / "1M" / "hf").mkdir(parents=True)  # the export training wrote there
    params = {"train.sbatch": [], "evaluate.sbatch": ["params/paper/04_evaluate.yaml"]}.get(
        script, ["params/paper/01_generate_qa.yaml"])
    full = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full.update(LONGCTX_RUNS=str(scratch), LONGCTX_PYTHON=sys.executable, SLURM_SUBMIT_DIR=str(ROOT), DRY_RUN="1",
                PYTHONPATH=str(ROOT / "lib"), **env)
    done = subprocess.run(["bash", str(ROOT / "slurm" / script), *params], env=full, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert _under_repo_runs(done.stdout.replace(": ", "= ")) == [], done.stdout
    if script in ("train.sbatch", "evaluate.sbatch", "generate_vllm.sbatch"):
        assert str(scratch / "slurm") in done.stdout, done.stdout
    if script == "evaluate.sbatch":
        assert f"model_path={scratch}/paper/03_train/1M/hf" in done.stdout
