"""Stage 1 on SLURM with a self-hosted generator: the rendered sbatch chain, the array script's
dry run, and one array task's real command against the embedded llama.cpp server."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from longctx.core.config import load_params
from longctx.generate.launch import sbatch_commands
from longctx.generate.params import GenerateParams

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "generate_vllm.sbatch"
PAPER = ROOT / "params" / "paper" / "01_generate_qa.yaml"
TINY = ROOT / "params" / "test" / "01_generate_qa.yaml"
PY = '"${LONGCTX_PYTHON:-.venv/bin/python}"'


def test_sbatch_chain_prepares_runs_and_merges():
    lines = sbatch_commands(load_params(GenerateParams, PAPER), PAPER, shards=64, model="/m/Qwen2-72B-Instruct",
                            tp=8, port=8001, servers=8)
    p = "params/paper/01_generate_qa.yaml"
    assert lines[2] == ("prep=$(sbatch --parsable --job-name=longctx-prepare-corpus --cpus-per-task=4 --mem=16G "
                        "--time=24:00:00 --output=runs/slurm/%x-%j.out "
                        f"--wrap='{PY} -m longctx.generate.corpus_shards --params {p} --shards 64')")
    assert lines[3] == ("gen=$(sbatch --parsable --dependency=afterok:$prep --array=0-63%8 --gpus-per-node=8 "
                        "--time=48:00:00 --export=ALL,SHARDS=64,MODEL=/m/Qwen2-72B-Instruct,TP=8,PORT=8001 "
                        f"slurm/generate_vllm.sbatch {p})")
    assert lines[4] == ("sbatch --dependency=afterok:$gen --job-name=longctx-merge --cpus-per-task=2 --mem=8G "
                        f"--time=2:00:00 --output=runs/slurm/%x-%j.out --wrap='{PY} -m longctx.generate --params {p} --merge'")
    # without prepared shard files there is no preparation job; servers default to projection_servers
    tiny = load_params(GenerateParams, TINY)
    lines = sbatch_commands(tiny, TINY, shards=4, model="m", tp=4)
    assert len(lines) == 4 and "--array=0-3%1 --gpus-per-node=4 " in lines[2] and "afterok" not in lines[2]
    with pytest.raises(ValueError, match="splits on commas"):
        sbatch_commands(tiny, TINY, shards=4, model="m", generate_args="--set a=1,2")


def run_script(env: dict[str, str], params: Path = PAPER, timeout: float = 60) -> subprocess.CompletedProcess:
    full = {**os.environ, "LONGCTX_PYTHON": sys.executable, "SLURM_SUBMIT_DIR": str(ROOT),
            "PYTHONPATH": str(ROOT / "lib"), **env}
    return subprocess.run(["bash", str(SCRIPT), str(params)], env=full, capture_output=True, text=True,
                          timeout=timeout, check=True)


def dry_lines(out: str) -> dict[str, list[str] | str]:
    found = dict(line.split(": ", 1) for line in out.splitlines())
    return {k: shlex.split(v) if k in ("serve", "generate") else v for k, v in found.items()}


def test_array_task_dry_run_serves_on_its_node_and_points_the_shard_at_it():
    got = dry_lines(run_script({"DRY_RUN": "1", "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MAX": "63", "SHARDS": "64",
                                "MODEL": "/m/Qwen2-72B-Instruct", "TP": "4", "PORT": "8123",
                                "VLLM_ARGS": "--gpu-memory-utilization 0.92",
                                "GENERATE_ARGS": "--set max_concurrency=64"}).stdout)
    assert got["shard"] == "5/64" and got["health"] == "http://127.0.0.1:8123/health"
    assert got["serve"] == ["vllm", "serve", "/m/Qwen2-72B-Instruct", "--host", "127.0.0.1", "--port", "8123",
                            "--tensor-parallel-size", "4", "--served-model-name", "Qwen/Qwen2-72B-Instruct",
                            "--max-model-len", "32768", "--enable-prefix-caching",
                            "--gpu-memory-utilization", "0.92"]
    assert got["generate"] == [sys.executable, "-m", "longctx.generate", "--params", str(PAPER), "--shard", "5/64",
                               "--set", "llm_base_url=http://127.0.0.1:8123/v1",
                               "--set", "llm_api_key_env=''", "--set", "llm_model=Qwen/Qwen2-72B-Instruct",
                               "--set", "max_concurrency=64"]
    # a shared server: no vLLM started, its URL used as is
    got = dry_lines(run_script({"DRY_RUN": "1", "GENERATOR_URL": "http://gpu7:9000/v1/"}).stdout)
    assert "serve" not in got and got["health"] == "http://gpu7:9000/health"
    assert "llm_base_url=http://gpu7:9000/v1" in got["generate"] and got["shard"] == "0/1"
    with pytest.raises(subprocess.CalledProcessError) as err:
        run_script({"DRY_RUN": "1"})
    assert "set MODEL" in err.value.stderr


@pytest.mark.parametrize("script", ["generate_vllm.sbatch", "generate.sbatch"])
def test_a_resubmitted_array_task_keeps_the_shard_count(script):
    """``sbatch --array=17`` resubmits one failed task: SLURM then says the array's highest index is
    17, so the count must come from SHARDS (17/64, not 17/18); an array task without SHARDS stops
    with the reason instead of computing another partition of the corpus."""
    env = {**os.environ, "LONGCTX_PYTHON": "echo", "SLURM_SUBMIT_DIR": str(ROOT), "PYTHONPATH": str(ROOT / "lib"),
           "DRY_RUN": "1", "GENERATOR_URL": "http://gpu7:9000/v1", "SERVED_NAME": "m",
           "SLURM_ARRAY_TASK_ID": "17", "SLURM_ARRAY_TASK_MAX": "17"}
    run = [str(ROOT / "slurm" / script), str(TINY)]
    out = subprocess.run(["bash", *run], env={**env, "SHARDS": "64"}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--shard 17/64" in out.stdout and "17/18" not in out.stdout
    out = subprocess.run(["bash", *run], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "pass the shard count" in out.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~1 min on an idle 2-core machine; minutes per request when it is shared
def test_array_task_runs_its_shard_against_a_live_server(tmp_path):
    """The script's own health wait and per-shard command, with the embedded SmolLM2 as the server.

    The tiny profile, cut further to one 256-token chunk and one question of each kind (about five
    requests), since the point is the task's wiring, not the generator."""
    from longctx.llm.server import EmbeddedServer

    out = tmp_path / "gen"
    smaller = ("--set max_concurrency=1 --set max_document_tokens=256 --set n_hierarchical=1 "
               "--set n_global_questions=1 --set n_diverse=1 --set max_qa_attempts=1 "
               "--set max_qa_tokens=96 --set max_summary_tokens=96")
    with EmbeddedServer(n_ctx=8192, n_parallel=1, n_threads=os.cpu_count()) as server:
        result = run_script({"GENERATOR_URL": server.base_url, "SLURM_ARRAY_TASK_ID": "0", "SHARDS": "2",
                             "GENERATE_ARGS": f"--set output_dir={out} {smaller}"}, params=TINY, timeout=1700)
        base_url = server.base_url
    assert "generator healthy; shard 0/2" in result.stdout
    shard = out / "shards" / "00000-of-00002"
    manifest = json.loads((shard / "manifest.json").read_text())
    assert manifest["generator"]["endpoint"] == base_url and manifest["shard"] == "0/2"
    assert manifest["counts"]["documents_written"] == 1 and manifest["this_invocation"]["llm_total"]["requests"] > 0
    record = json.loads((shard / "qa.jsonl").read_text())
    assert record["id"] == "sensesensibility" and record["n_tokens"] <= 256


def test_llamacpp_stand_in_is_one_switch():
    """``--server llamacpp`` (``SERVER=llamacpp``): the task serves the embedded llama.cpp model on
    its port instead of vLLM; the health wait and the shard's command are those of a vLLM task."""
    tiny = load_params(GenerateParams, TINY)
    lines = sbatch_commands(tiny, TINY, shards=2, model="", tp=1, servers=1, server="llamacpp")
    assert "--export=ALL,SHARDS=2,SERVER=llamacpp,TP=1,PORT=8000 slurm/generate_vllm.sbatch" in lines[2]
    got = dry_lines(run_script({"DRY_RUN": "1", "SERVER": "llamacpp", "SLURM_ARRAY_TASK_ID": "1", "SHARDS": "2",
                                "PORT": "8124", "LLAMACPP_ARGS": "--threads 1"}, params=TINY).stdout)
    assert got["serve"][:8] == [sys.executable, "-m", "longctx.llm.server", "--host", "127.0.0.1", "--port", "8124",
                                "--parent-pid"] and got["serve"][-2:] == ["--threads", "1"]
    assert got["health"] == "http://127.0.0.1:8124/health" and got["shard"] == "1/2"
    assert "llm_base_url=http://127.0.0.1:8124/v1" in got["generate"] and "llm_model=SmolLM2-135M-Instruct" in got["generate"]
    with pytest.raises(subprocess.CalledProcessError) as err:
        run_script({"DRY_RUN": "1", "SERVER": "sglang"}, params=TINY)
    assert "use vllm or llamacpp" in err.value.stderr
