"""Stage 1 on SLURM with a self-hosted generator: the rendered sbatch chain, the array script's
dry run, and one array task's real command against the embedded llama.cpp server."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
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
LOGS = '"${LONGCTX_RUNS:-runs}/slurm"'
API_SCRIPT = ROOT / "slurm" / "generate.sbatch"


def test_sbatch_chain_prepares_runs_and_merges():
    lines = sbatch_commands(load_params(GenerateParams, PAPER), PAPER, shards=64, model="/m/Qwen2-72B-Instruct",
                            tp=8, port=8001, servers=8)
    p = "params/paper/01_generate_qa.yaml"
    # the log folder exists before the first sbatch (SLURM does not create it), under the run root
    assert lines[0].startswith("set -a; source slurm/cluster.env; set +a")
    assert lines[1].startswith(f"mkdir -p {LOGS} ")
    assert lines.pop(2) == ("# each task serves its own generator: max_concurrency 32 is per server, 256 requests "
                            "in flight on 8 servers at once")
    assert lines[2] == ("prep=$(sbatch --parsable --job-name=longctx-prepare-corpus --cpus-per-task=4 --mem=16G "
                        f"--time=24:00:00 --output={LOGS}/%x-%j.out "
                        f"--wrap='{PY} -m longctx.generate.corpus_shards --params {p} --shards 64')")
    assert lines[3] == ("gen=$(sbatch --parsable --dependency=afterok:$prep --array=0-63%8 --gpus-per-node=8 "
                        '--cpus-per-task="${GENERATE_CPUS:-16}" --mem="${GENERATE_MEM:-0}" ${GENERATE_EXCLUSIVE:+--exclusive} '
                        f"--time=48:00:00 --output={LOGS}/%x-%A_%a.out "
                        "--export=ALL,SHARDS=64,MODEL=/m/Qwen2-72B-Instruct,TP=8,PORT=8001 "
                        f"slurm/generate_vllm.sbatch {p})")
    assert lines[4] == ("sbatch --dependency=afterok:$gen --job-name=longctx-merge --cpus-per-task=2 --mem=8G "
                        f"--time=2:00:00 --output={LOGS}/%x-%j.out --wrap='{PY} -m longctx.generate --params {p} --merge'")
    # without prepared shard files there is no preparation job; servers default to projection_servers
    tiny = load_params(GenerateParams, TINY)
    lines = sbatch_commands(tiny, TINY, shards=4, model="m", tp=4)
    assert len(lines) == 6 and "--array=0-3%1 --gpus-per-node=4 " in lines[3] and "afterok" not in lines[3]
    with pytest.raises(ValueError, match="splits on commas"):
        sbatch_commands(tiny, TINY, shards=4, model="m", generate_args="--set a=1,2")


def test_api_chain_splits_the_runs_limits_over_the_tasks_at_once():
    """Through a hosted API the params' limits are the run's: 8 tasks at once take 1/8 each, and
    the rendered lines say so before anything is submitted."""
    paper = load_params(GenerateParams, PAPER)
    paper = dataclasses.replace(paper, requests_per_minute=600.0, tokens_per_minute=2e6, max_cost_usd=4000.0)
    lines = sbatch_commands(paper, PAPER, shards=64, servers=8, api=True)
    p = "params/paper/01_generate_qa.yaml"
    assert lines[2] == ("# 8 tasks at once share the run's limits; each task gets 4 requests in flight (of 32), "
                        "75 RPM (of 600), 250,000 TPM (of 2,000,000); the whole run stops at $4000 (max_cost_usd)")
    assert lines[4] == ("gen=$(sbatch --parsable --dependency=afterok:$prep --array=0-63%8 "
                        '--cpus-per-task="${GENERATE_CPUS:-4}" --mem="${GENERATE_MEM:-16G}" '
                        f"--time=48:00:00 --output={LOGS}/%x-%A_%a.out --export=ALL,SHARDS=64,TASKS_AT_ONCE=8 "
                        f"slurm/generate.sbatch {p})")
    assert lines[-1] == f"# while it runs: {PY} -m longctx.generate.status --params {p}"
    # the task the array starts takes its share: the script passes TASKS_AT_ONCE on
    got = dry_lines(run_script({"DRY_RUN": "1", "SLURM_ARRAY_TASK_ID": "3", "SHARDS": "64", "TASKS_AT_ONCE": "8"},
                               script=API_SCRIPT).stdout)
    assert got["generate"] == [sys.executable, "-m", "longctx.generate", "--params", str(PAPER), "--shard", "3/64",
                               "--set", "limits_shared_by=8"]
    with pytest.raises(ValueError, match="64 tasks at once cannot share max_concurrency 32"):
        sbatch_commands(paper, PAPER, shards=64, servers=64, api=True)


def run_script(env: dict[str, str], params: Path = PAPER, timeout: float = 60, script: Path = SCRIPT,
               check: bool = True) -> subprocess.CompletedProcess:
    full = {**os.environ, "LONGCTX_PYTHON": sys.executable, "SLURM_SUBMIT_DIR": str(ROOT),
            "PYTHONPATH": str(ROOT / "lib"), **env}
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MAX", "SHARDS"):  # only what the test sets
        if name not in env:
            full.pop(name, None)
    return subprocess.run(["bash", str(script), str(params)], env=full, capture_output=True, text=True,
                          timeout=timeout, check=check)


def dry_lines(out: str) -> dict[str, list[str] | str]:
    found = dict(line.split(": ", 1) for line in out.splitlines())
    return {k: shlex.split(v) if k in ("serve", "generate") else v for k, v in found.items()}


def test_array_task_dry_run_serves_on_its_node_and_points_the_shard_at_it():
    got = dry_lines(run_script({"DRY_RUN": "1", "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MAX": "63",
                                "SHARDS": "64", "MODEL": "/m/Qwen2-72B-Instruct", "TP": "4", "PORT": "8123",
                                "VLLM_ARGS": "--gpu-memory-utilization 0.92",
                                "GENERATE_ARGS": "--set max_concurrency=64"}).stdout)
    assert got["shard"] == "5/64" and got["health"] == "http://127.0.0.1:8123/health"
    assert got["serve"] == ["vllm", "serve", "/m/Qwen2-72B-Instruct", "--host", "127.0.0.1", "--port", "8123",
                            "--tensor-parallel-size", "4", "--served-model-name", "Qwen/Qwen2-72B-Instruct",
                            "--max-model-len", "32768", "--enable-prefix-caching", "--generation-config", "vllm",
                            "--gpu-memory-utilization", "0.92"]
    # progress stays on: its plain lines are the task's log
    assert got["generate"] == [sys.executable, "-m", "longctx.generate", "--params", str(PAPER), "--shard", "5/64",
                               "--set", "llm_base_url=http://127.0.0.1:8123/v1",
                               "--set", "llm_api_key_env=''", "--set", "llm_model=Qwen/Qwen2-72B-Instruct",
                               "--set", "max_concurrency=64"]
    # a shared server: no vLLM started, its URL used as is
    got = dry_lines(run_script({"DRY_RUN": "1", "GENERATOR_URL": "http://gpu7:9000/v1/", "TASKS_AT_ONCE": "4"}).stdout)
    assert "serve" not in got and got["health"] == "http://gpu7:9000/health"
    assert "llm_base_url=http://gpu7:9000/v1" in got["generate"] and got["shard"] == "0/1"
    assert "limits_shared_by=4" in got["generate"]  # one server for the array: its tasks share the limits
    with pytest.raises(subprocess.CalledProcessError) as err:
        run_script({"DRY_RUN": "1"})
    assert "set MODEL" in err.value.stderr


@pytest.mark.parametrize("script", [SCRIPT, API_SCRIPT], ids=["vllm", "api"])
def test_the_shard_count_is_explicit_so_a_resubmitted_task_keeps_its_shard(script):
    """``sbatch --array=17`` alone sets SLURM_ARRAY_TASK_MAX=17: the count must come from SHARDS."""
    env = {"DRY_RUN": "1", "MODEL": "/m", "SLURM_ARRAY_TASK_ID": "17", "SLURM_ARRAY_TASK_MAX": "17"}
    got = dry_lines(run_script({**env, "SHARDS": "64"}, script=script).stdout)
    assert got["shard"] == "17/64" and got["generate"][got["generate"].index("--shard") + 1] == "17/64"
    missing = run_script(env, script=script, check=False)
    assert missing.returncode == 2 and "SHARDS is not set" in missing.stderr and not missing.stdout
    outside = run_script({**env, "SHARDS": "16"}, script=script, check=False)
    assert outside.returncode == 2 and "array task 17 is not a shard of SHARDS=16" in outside.stderr


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
               "--set max_qa_tokens=96 --set max_summary_tokens=256")  # 96: section summaries cut and re-asked four times (11 requests; 8 with 256)
    with EmbeddedServer(n_ctx=8192, n_parallel=1, n_threads=os.cpu_count()) as server:
        result = run_script({"GENERATOR_URL": server.base_url, "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MAX": "1",
                             "SHARDS": "2", "GENERATE_ARGS": f"--set output_dir={out} {smaller}"}, params=TINY, timeout=1700)
        base_url = server.base_url
    assert f"generator healthy at {base_url[:-3]}/health; shard 0/2" in result.stdout
    shard = out / "shards" / "00000-of-00002"
    manifest = json.loads((shard / "manifest.json").read_text())
    assert manifest["generator"]["endpoint"] == base_url and manifest["shard"] == "0/2"
    assert manifest["counts"]["documents_written"] == 1 and manifest["this_invocation"]["llm_total"]["requests"] > 0
    record = json.loads((shard / "qa.jsonl").read_text())
    assert record["id"] == "sensesensibility" and record["n_tokens"] <= 256


@pytest.mark.parametrize("script", [SCRIPT, API_SCRIPT], ids=["vllm", "api"])
def test_cluster_env_reaches_the_task_exported(script, tmp_path):
    """cluster.env is sourced with 'set -a': HF_HOME and LONGCTX_RUNS reach the Python process,
    and the task's log folder is made under the run root."""
    submit = tmp_path / "checkout"
    (submit / "slurm").mkdir(parents=True)
    shutil.copy(ROOT / "slurm" / "ports.sh", submit / "slurm")  # a checkout's
    fake = tmp_path / "python"  # stands in for the project's Python: answers the health check, shows its env
    fake.write_text('#!/bin/bash\nif [ "$1" = -c ]; then exit 0; fi\n'
                    'if [ "$2" = longctx.generate.status ]; then exit 1; fi  # the shard has not finished\n'
                    'echo "seen: HF_HOME=${HF_HOME:-} LONGCTX_RUNS=${LONGCTX_RUNS:-} args=$*"\n')
    fake.chmod(0o755)
    (submit / "slurm" / "cluster.env").write_text(
        f"LONGCTX_PYTHON={fake}\nHF_HOME=/shared/hf\nLONGCTX_RUNS={tmp_path / 'scratch'}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "LONGCTX_RUNS", "LONGCTX_PYTHON", "SHARDS")
           and not k.startswith("SLURM_")}
    env.update(SLURM_SUBMIT_DIR=str(submit), SLURM_ARRAY_TASK_ID="2", SHARDS="4", GENERATOR_URL="http://gpu7:9000/v1")
    done = subprocess.run(["bash", str(script), str(PAPER)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [seen] = [line for line in done.stdout.splitlines() if line.startswith("seen: ")]
    assert seen.startswith(f"seen: HF_HOME=/shared/hf LONGCTX_RUNS={tmp_path / 'scratch'} args=-m longctx.generate")
    assert "--shard 2/4" in seen and (tmp_path / "scratch" / "slurm").is_dir()


def test_a_finished_shard_starts_no_server(tmp_path):
    """A resubmitted or requeued task whose shard has its manifest exits before loading 72B weights."""
    out = tmp_path / "gen"
    shard = out / "shards" / "00002-of-00004"
    shard.mkdir(parents=True)
    vllm = tmp_path / "vllm"  # would leave a trace if started
    vllm.write_text(f"#!/bin/bash\ntouch {tmp_path / 'started'}\nsleep 60\n")
    vllm.chmod(0o755)
    env = {"SLURM_ARRAY_TASK_ID": "2", "SHARDS": "4", "MODEL": "/m", "VLLM": str(vllm), "STARTUP_TIMEOUT": "1",
           "GENERATE_ARGS": f"--set output_dir={out}"}
    running = run_script(env, check=False)
    assert running.returncode == 1 and (tmp_path / "started").exists()  # not finished: the server starts
    (tmp_path / "started").unlink()
    (shard / "manifest.json").write_text("{}")
    done = run_script(env)
    assert "nothing to do: shard 2/4 has finished" in done.stdout and not (tmp_path / "started").exists()


def test_llamacpp_stand_in_is_one_switch():
    """``--server llamacpp`` (``SERVER=llamacpp``): the task serves the embedded llama.cpp model on
    its port instead of vLLM; the health wait and the shard's command are those of a vLLM task."""
    tiny = load_params(GenerateParams, TINY)
    lines = sbatch_commands(tiny, TINY, shards=2, model="", tp=1, servers=1, server="llamacpp")
    [gen] = [line for line in lines if line.startswith("gen=")]
    assert "--export=ALL,SHARDS=2,SERVER=llamacpp,TP=1 slurm/generate_vllm.sbatch" in gen  # no PORT: picked on the node
    got = dry_lines(run_script({"DRY_RUN": "1", "SERVER": "llamacpp", "SLURM_ARRAY_TASK_ID": "1", "SHARDS": "2",
                                "PORT": "8124", "LLAMACPP_ARGS": "--threads 1"}, params=TINY).stdout)
    assert got["serve"][:8] == [sys.executable, "-m", "longctx.llm.server", "--host", "127.0.0.1", "--port", "8124",
                                "--parent-pid"] and got["serve"][-2:] == ["--threads", "1"]
    assert got["health"] == "http://127.0.0.1:8124/health" and got["shard"] == "1/2"
    assert "llm_base_url=http://127.0.0.1:8124/v1" in got["generate"] and "llm_model=SmolLM2-135M-Instruct" in got["generate"]
    with pytest.raises(subprocess.CalledProcessError) as err:
        run_script({"DRY_RUN": "1", "SERVER": "sglang"}, params=TINY)
    assert "use vllm or llamacpp" in err.value.stderr
