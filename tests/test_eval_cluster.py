"""Stage 4 on a cluster: slurm/evaluate.sbatch's dry run, and its real run with the CPU stand-in
server (``SERVER=transformers``) on tiny Llama exports with Llama-3's vocabulary: two different
checkpoints served under one name into one output folder get their own answers; a shard split
merges into one table per checkpoint; the client runs with torch unimportable."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "evaluate.sbatch"
PAPER = ROOT / "params" / "paper" / "04_evaluate.yaml"


def run_script(env: dict[str, str], params: Path = PAPER, timeout: float = 60, check: bool = True):
    full = {**os.environ, "LONGCTX_PYTHON": sys.executable, "SLURM_SUBMIT_DIR": str(ROOT),
            "PYTHONPATH": str(ROOT / "lib"), **env}
    return subprocess.run(["bash", str(SCRIPT), str(params)], env=full, capture_output=True, text=True,
                          timeout=timeout, check=check)


def dry_lines(out: str) -> dict[str, list[str] | str]:
    found = dict(line.split(": ", 1) for line in out.splitlines())
    return {k: shlex.split(v) if k in ("serve", "evaluate") else v for k, v in found.items()}


def test_dry_run_serves_the_checkpoint_with_vllm_and_evaluates_its_shard(tmp_path):
    export = tmp_path / "hf"
    export.mkdir()
    got = dry_lines(run_script({"DRY_RUN": "1", "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MAX": "7",
                                "SLURM_ARRAY_JOB_ID": "991", "MODEL": str(export), "TP": "8", "PORT": "8123",
                                "MAX_MODEL_LEN": "1048576", "VLLM_ARGS": "--gpu-memory-utilization 0.92",
                                "EVALUATE_ARGS": "--set max_concurrency=64"}).stdout)
    assert got["shard"] == "2/8" and got["health"] == "http://127.0.0.1:8123/health"
    assert got["run_id"] == "ours-1m-991"  # served name (llm_model of the params) + array job
    assert got["serve"] == ["vllm", "serve", str(export), "--host", "127.0.0.1", "--port", "8123",
                            "--served-model-name", "ours-1m", "--max-model-len", "1048576",
                            "--tensor-parallel-size", "8", "--generation-config", "vllm", "--enable-prefix-caching",
                            "--enable-chunked-prefill", "--gpu-memory-utilization", "0.92"]
    assert got["evaluate"] == [sys.executable, "-m", "longctx.evaluate", "--params", str(PAPER), "--shard", "2/8",
                               "--set", "llm_base_url=http://127.0.0.1:8123/v1", "--set", "llm_model=ours-1m",
                               "--set", "run_id=ours-1m-991", "--set", "llm_api_key_env=''",
                               "--set", f"model_path={export}", "--set", "max_concurrency=64"]


def test_dry_run_cpu_stand_in_server_takes_the_same_flags():
    got = dry_lines(run_script({"DRY_RUN": "1", "SERVER": "transformers", "MODEL": "some/hub-model",
                                "RUN_ID": "r1", "SHARD": "0/1", "HF_SERVER_ARGS": "--dtype float32"}).stdout)
    assert got["serve"] == [sys.executable, "-m", "longctx.eval.hf_server", "some/hub-model", "--host", "127.0.0.1",
                            "--port", "8000", "--served-model-name", "ours-1m", "--dtype", "float32"]
    assert "model_path=some/hub-model" not in " ".join(got["evaluate"])  # a hub id has no folder to digest
    got = dry_lines(run_script({"DRY_RUN": "1", "EVAL_URL": "http://gpu7:9000/v1/"}).stdout)
    assert "serve" not in got and got["health"] == "http://gpu7:9000/health" and got["shard"] == "0/1"
    bad = run_script({"DRY_RUN": "1", "SERVER": "sglang", "MODEL": "m"}, check=False)
    assert bad.returncode == 2 and "SERVER must be vllm or transformers" in bad.stderr
    bad = run_script({"DRY_RUN": "1"}, check=False)
    assert bad.returncode != 0 and "set MODEL" in bad.stderr


# --------------------------------------------------------------------------- real runs, tiny exports


def tiny_export(folder: Path, seed: int) -> Path:
    """A 2-layer Llama of width 16 over Llama-3's vocabulary, exported with the serving files."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from longctx.train.serving_files import write_serving_files

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128256, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    write_serving_files(folder)
    return folder


def eval_params(path: Path, out: Path, **extra) -> Path:
    params = {"model_name": "ours", "backend": "openai", "llm_base_url": "http://127.0.0.1:1/v1", "llm_model": "ours",
              "llm_server": "auto", "tokenizer": "llama3", "benchmarks": ["ruler"],
              "ruler_tasks": ["niah_single_1", "vt"], "ruler_lengths": [512, 1024], "n_samples": 1,
              "max_new_tokens_cap": 8, "output_dir": str(out), "cache_dir": str(out / "samples"), **extra}
    path.write_text(yaml.safe_dump(params))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(600)
def test_two_checkpoints_served_under_one_name_get_their_own_answers(tmp_path):
    """The whole job, as SLURM would run it, twice per checkpoint: A, B (same name, same output
    folder), then A again (every answer from A's cache), each split over two shards and merged."""
    a, b = tiny_export(tmp_path / "a" / "hf", 1), tiny_export(tmp_path / "b" / "hf", 2)
    out = tmp_path / "eval"
    params = eval_params(tmp_path / "04.yaml", out)

    def job(model: Path, run_id: str) -> dict:
        port = str(free_port())
        for index in range(2):
            result = run_script({"SERVER": "transformers", "MODEL": str(model), "PORT": port, "RUN_ID": run_id,
                                 "SHARD": f"{index}/2", "STARTUP_TIMEOUT": "300",
                                 "EVALUATE_ARGS": "--set request_timeout_s=300"}, params=params, timeout=400)
            assert "server healthy; evaluation shard" in result.stdout
        merged = subprocess.run([sys.executable, "-m", "longctx.evaluate", "--params", str(params), "--merge", run_id],
                                env={**os.environ, "PYTHONPATH": str(ROOT / "lib")}, capture_output=True, text=True,
                                check=True, timeout=120)
        assert "niah_single_1" in merged.stdout
        shards = [json.loads((out / run_id / "shards" / f"{i}-of-2" / "manifest.json").read_text()) for i in range(2)]
        preds = [json.loads(line) for line in (out / run_id / "predictions.jsonl").read_text().splitlines()]
        return {"fingerprint": shards[0]["backend"]["model_fingerprint"],
                "requests": sum(s["llm_total"]["requests"] for s in shards),
                "hits": sum(s["llm_total"]["cache_hits"] for s in shards),
                "answers": {(p["task"], p["context_length"]): p["prediction"] for p in preds}}

    first_a, first_b, again_a = job(a, "a1"), job(b, "b1"), job(a, "a2")
    assert first_a["fingerprint"].startswith("sha256:") and first_a["fingerprint"] != first_b["fingerprint"]
    assert len(first_a["answers"]) == 4 and first_a["requests"] == 4 and first_a["hits"] == 0
    assert first_b["requests"] == 4 and first_b["hits"] == 0          # B was asked, not served A's answers
    assert first_a["answers"] != first_b["answers"]                    # and B's weights answer otherwise
    assert again_a["requests"] == 0 and again_a["hits"] == 4           # A again: nothing recomputed
    assert again_a["answers"] == first_a["answers"]
    # one results table per checkpoint, and every row in the output folder's table once
    import pandas as pd
    per_run = pd.read_csv(out / "a1" / "results.csv")
    assert sorted(zip(per_run.task, per_run.context_length)) == [("niah_single_1", 512), ("niah_single_1", 1024),
                                                                 ("vt", 512), ("vt", 1024)]
    assert len(pd.read_csv(out / "results.csv")) == 12
    again = subprocess.run([sys.executable, "-m", "longctx.evaluate", "--params", str(params), "--merge", "a1"],
                           env={**os.environ, "PYTHONPATH": str(ROOT / "lib")}, capture_output=True, text=True)
    assert again.returncode == 2 and "merged already" in again.stderr


_BLOCK_TORCH = "import sys\nsys.modules['torch'] = None  # any 'import torch' raises ImportError\n"


@pytest.mark.timeout(300)
def test_the_client_evaluates_against_a_server_without_torch(tmp_path):
    """``python -m longctx.evaluate`` from the base install (torch unimportable) against the stand-in
    server; the served folder's fingerprint comes from the server's /v1/models."""
    export = tiny_export(tmp_path / "hf", 3)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    server = subprocess.Popen([sys.executable, "-m", "longctx.eval.hf_server", str(export), "--port", str(port),
                               "--served-model-name", "ours"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                assert time.monotonic() < deadline, "hf_server not healthy"
                time.sleep(1)
        models = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models").read())["data"][0]
        assert models["max_model_len"] == 2048 and models["id"] == "ours"
        blocker = tmp_path / "block"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(_BLOCK_TORCH)
        out = tmp_path / "eval"
        params = eval_params(tmp_path / "04.yaml", out, llm_base_url=f"http://127.0.0.1:{port}/v1",
                             ruler_tasks=["niah_single_1"], ruler_lengths=[512], run_id="nt")
        no_torch = {**env, "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT / 'lib'}"}
        probe = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch, capture_output=True)
        assert probe.returncode != 0  # the blocker works
        result = subprocess.run([sys.executable, "-m", "longctx.evaluate", "--params", str(params)], env=no_torch,
                                capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        manifest = json.loads((out / "nt" / "manifest.json").read_text())
        assert manifest["backend"]["server"] == "vllm"  # the stand-in speaks vLLM's dialect
        assert manifest["backend"]["model_fingerprint"] == json.loads(
            (export / "longctx_fingerprint.json").read_text())["fingerprint"]
        assert manifest["llm_total"]["requests"] == 1
    finally:
        server.terminate()
        server.wait(timeout=30)
