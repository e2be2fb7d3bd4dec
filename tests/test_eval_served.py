"""Stage 4 served as on a cluster: slurm/evaluate.sbatch's real run with the CPU stand-in server
(``SERVER=transformers``) on tiny Llama exports with Llama-3's vocabulary: two different
checkpoints served under one name into one output folder get their own answers; a shard split
merges into one table per checkpoint; two tasks on one node serve on their own ports; the client
runs with torch unimportable; the HF backend renders RULER's answer prefix as servers do."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from eval_script import _BLOCK_TORCH, ROOT, SCRIPT, run_script


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


class Served:
    """``python -m longctx.eval.hf_server`` on a free port for the ``with``."""

    def __init__(self, export: Path, name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen([sys.executable, "-m", "longctx.eval.hf_server", str(export), "--port",
                                      str(self.port), "--served-model-name", name],
                                     env={**os.environ, "PYTHONPATH": str(ROOT / "lib")}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> "Served":
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(self.url[:-3] + "/health", timeout=5)
                return self
            except OSError:
                assert self.proc.poll() is None, self.proc.stderr.read()
                assert time.monotonic() < deadline, "hf_server not healthy"
                time.sleep(1)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def evaluate(params: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longctx.evaluate", "--params", str(params), *args],
                          env=env or {**os.environ, "PYTHONPATH": str(ROOT / "lib")}, capture_output=True,
                          text=True, timeout=300)


def summary(out: Path, run_id: str, shards: int = 0) -> dict:
    folders = [out / run_id / "shards" / f"{i}-of-{shards}" for i in range(shards)] if shards else [out / run_id]
    manifests = [json.loads((f / "manifest.json").read_text()) for f in folders]
    preds = [json.loads(line) for line in (out / run_id / "predictions.jsonl").read_text().splitlines()]
    return {"fingerprint": manifests[0]["backend"]["model_fingerprint"],
            "server": manifests[0]["backend"]["server"],
            "requests": sum(m["llm_total"]["requests"] for m in manifests),
            "hits": sum(m["llm_total"]["cache_hits"] for m in manifests),
            "answers": {(p["task"], p["context_length"]): p["prediction"] for p in preds}}


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~2-3 min on 2 idle cores: two servers load torch, five evaluation processes
def test_two_checkpoints_served_under_one_name_get_their_own_answers(tmp_path):
    """A and B (different tiny checkpoints) served as "ours" into one output folder:

    * A: evaluate.sbatch's shards 0/2 and 1/2 against A's server (EVAL_URL), then ``--merge``;
    * B: the whole job as SLURM runs it, SERVER=transformers starting and stopping B's server;
    * A again, by ``python -m longctx.evaluate`` with torch unimportable: every answer from A's cache.
    """
    a, b = tiny_export(tmp_path / "a" / "hf", 1), tiny_export(tmp_path / "b" / "hf", 2)
    out = tmp_path / "eval"
    params = eval_params(tmp_path / "04.yaml", out)
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_BLOCK_TORCH)
    no_torch = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT / 'lib'}"}
    assert subprocess.run([sys.executable, "-c", "import torch"], env=no_torch, capture_output=True).returncode != 0

    with Served(a, "ours") as server:
        models = json.loads(urllib.request.urlopen(server.url + "/models").read())["data"][0]
        assert models["max_model_len"] == 2048 and models["id"] == "ours"
        for index in range(2):
            result = run_script({"EVAL_URL": server.url, "RUN_ID": "a1", "SHARD": f"{index}/2"}, params=params,
                                timeout=300)
            assert "server healthy at " in result.stdout and "; evaluation shard" in result.stdout
        merged = evaluate(params, "--merge", "a1")
        assert merged.returncode == 0 and "niah_single_1" in merged.stdout, merged.stderr[-2000:]
        first_a = summary(out, "a1", shards=2)

        result = run_script({"SERVER": "transformers", "MODEL": str(b), "PORT": str(free_port()), "RUN_ID": "b1",
                             "STARTUP_TIMEOUT": "300"}, params=params, timeout=400)
        assert "starting: " in result.stdout and "server healthy at " in result.stdout
        first_b = summary(out, "b1")

        again = evaluate(params, "--set", f"llm_base_url={server.url}", "--set", "run_id=a2", env=no_torch)
        assert again.returncode == 0, again.stderr[-3000:]
        again_a = summary(out, "a2")

        # the stand-in answers as the checkpoint loaded in-process does (HF backend: template +
        # continued answer prefix; raw prompt with BOS for /completions), token for token, RULER's
        # leading space in the prefix included (both render it through the template, which trims it)
        from longctx.eval.backends import OpenAIBackend
        from longctx.eval.hf_backend import HFBackend
        from longctx.eval.sample import Sample

        samples = [Sample("ruler", "niah_single_1", 0, 512, "What is the special magic number for Emma?", ["7"], 12,
                          answer_prefix=" The special magic number for Emma in the text above is"),
                   Sample("mmlu", "mmlu", 0, 0, "Question: 2 + 2 =\nA. 3\nB. 4\nAnswer:", ["B"], 6, chat=False)]
        served = OpenAIBackend(server.url, "ours", tokenizer="llama3", template_tokens=0).generate(samples)
        local = HFBackend(str(a), dtype="float32", device="cpu").generate(samples)
        assert [g.error for g in served] == ["", ""]
        assert [g.text for g in served] == [g.text for g in local] and all(g.text for g in local)
        assert [g.prompt_tokens for g in served] == [g.prompt_tokens for g in local]

    expected = json.loads((a / "longctx_fingerprint.json").read_text())["fingerprint"]
    assert first_a["fingerprint"] == expected == again_a["fingerprint"] != first_b["fingerprint"]
    assert first_a["server"] == "vllm"  # the stand-in speaks vLLM's dialect (continue_final_message)
    assert len(first_a["answers"]) == 4 and first_a["requests"] == 4 and first_a["hits"] == 0
    assert first_b["requests"] == 4 and first_b["hits"] == 0          # B was asked, not served A's answers
    assert first_a["answers"] != first_b["answers"]                    # and B's weights answer otherwise
    assert again_a["requests"] == 0 and again_a["hits"] == 4           # A again: nothing recomputed
    assert again_a["answers"] == first_a["answers"]
    # one results table per checkpoint, in the work list's order; every row once in the folder's table
    import pandas as pd
    per_run = pd.read_csv(out / "a1" / "results.csv")
    assert list(zip(per_run.task, per_run.context_length)) == [("niah_single_1", 512), ("niah_single_1", 1024),
                                                               ("vt", 512), ("vt", 1024)]
    assert sorted(pd.read_csv(out / "results.csv").run_id.value_counts().items()) == [("a1", 4), ("a2", 4), ("b1", 4)]
    twice = evaluate(params, "--merge", "a1")
    assert twice.returncode == 2 and "merged already" in twice.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~1-2 min on 2 idle cores: two CPU servers load torch at once
def test_two_tasks_on_one_node_serve_on_their_own_ports(tmp_path):
    """Two array tasks of one evaluation on one node at once (no --exclusive), no PORT given: each
    picks a free port from its SLURM_JOB_ID (slurm/ports.sh), skipping one already taken and one the
    other task reserved (the same first candidate here), starts its own CPU stand-in server there, waits for that port's health and evaluates its shard; the
    merge then holds both shards' rows once."""
    export = tiny_export(tmp_path / "hf", 1)
    out = tmp_path / "eval"
    params = eval_params(tmp_path / "04.yaml", out, ruler_tasks=["niah_single_1"], ruler_lengths=[256, 512])
    from longctx.eval.shards import assign, work_list
    from longctx.core.config import load_params
    from longctx.eval.params import EvalConfig

    cfg = load_params(EvalConfig, params)
    assert sorted(assign(work_list(cfg), 2, cfg, 2048)) == [0, 1]  # one group per task
    taken = socket.socket()
    taken.bind(("127.0.0.1", 20000 + 97 * 101 % 12000))  # the first port task 101 would try: held elsewhere
    full = {**os.environ, "LONGCTX_PYTHON": sys.executable, "SLURM_SUBMIT_DIR": str(ROOT),
            "PYTHONPATH": str(ROOT / "lib"), "SERVER": "transformers", "MODEL": str(export), "RUN_ID": "both",
            "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_MAX": "1", "STARTUP_TIMEOUT": "600",
            "LONGCTX_PORT_LOCKS": str(tmp_path / "ports"), "LONGCTX_RUNS": str(tmp_path / "runs")}  # server logs
    full.pop("PORT", None)
    # job ids 12000 apart start at the same port: only the reservation keeps the tasks apart
    tasks = [subprocess.Popen(["bash", str(SCRIPT), str(params)], env={**full, "SLURM_JOB_ID": str(101 + 12000 * i),
                                                                        "SLURM_ARRAY_TASK_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        logs = [t.communicate(timeout=800)[0] for t in tasks]
    finally:
        taken.close()
        for t in tasks:
            t.kill()
    assert [t.returncode for t in tasks] == [0, 0], "\n".join(logs)
    ports = [log.split("waiting for http://127.0.0.1:")[1].split("/")[0] for log in logs]
    assert ports[0] != str(20000 + 97 * 101 % 12000) and len(set(ports)) == 2, ports
    for log, port in zip(logs, ports):
        assert f"server healthy at http://127.0.0.1:{port}/health" in log
    merged = evaluate(params, "--merge", "both")
    assert merged.returncode == 0, merged.stderr[-2000:]
    import pandas as pd
    rows = pd.read_csv(out / "both" / "results.csv")
    assert sorted(zip(rows.task, rows.context_length)) == [("niah_single_1", 256), ("niah_single_1", 512)]


def test_hf_backend_renders_the_answer_prefix_as_servers_do(tmp_path):
    """RULER's answer prefix starts with a space (" The special magic ..."). A server renders it
    as a final assistant message through the model's template (vLLM's continue_final_message),
    and Llama-3's template trims it; the HF backend gives the model the same tokens, where it used
    to append the raw prefix, space included, after the generation prompt. The scorer sees the
    continuation only, whichever way it was asked."""
    from longctx.eval.hf_backend import HFBackend
    from longctx.eval.runner import score_sample
    from longctx.eval.ruler_spec import ANSWER_PREFIXES
    from longctx.eval.sample import Sample

    export = tiny_export(tmp_path / "hf", 3)
    backend = HFBackend(str(export), dtype="float32", device="cpu")
    prefix = ANSWER_PREFIXES["niah"].format(kind="number", query="Emma", are="is")
    assert prefix.startswith(" The special magic number for Emma")
    sample = Sample("ruler", "niah_single_1", 0, 512, "What is the special magic number for Emma?", ["7"], 4,
                    answer_prefix=prefix)
    hf = backend._hf
    user = [{"role": "user", "content": sample.prompt}]
    served = hf.apply_chat_template(user + [{"role": "assistant", "content": prefix}], tokenize=False,
                                    continue_final_message=True)  # what vLLM and hf_server render
    header = hf.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert served == header + prefix.strip()  # the template trims the space
    assert backend._render(sample) == hf(served, add_special_tokens=False)["input_ids"]
    assert backend._render(sample) != hf(header + prefix, add_special_tokens=False)["input_ids"]
    assert score_sample(sample, " 7.") == score_sample(sample, "7") == (1.0, "string_match_all")
