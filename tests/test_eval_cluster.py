"""Stage 4 on a cluster: slurm/evaluate.sbatch's dry run and the launcher's job chains, TP choice,
projection and shards (the real served runs: test_eval_served.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval_script import _BLOCK_TORCH, PAPER, ROOT, dry_lines, run_script


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
                                "RUN_ID": "r1", "SHARD": "0/1", "HF_SERVER_ARGS": "--dtype float32",
                                "SLURM_JOB_ID": "4321"}).stdout)
    port = got["health"].split(":")[-1].split("/")[0]  # no PORT: picked from the job id (slurm/ports.sh)
    assert 20000 <= int(port) < 32000 and got["server log"] == "runs/slurm/transformers-4321_0.log"
    assert got["serve"] == [sys.executable, "-m", "longctx.eval.hf_server", "some/hub-model", "--host", "127.0.0.1",
                            "--port", port, "--served-model-name", "ours-1m", "--dtype", "float32"]
    assert "model_path=some/hub-model" not in " ".join(got["evaluate"])  # a hub id has no folder to digest
    got = dry_lines(run_script({"DRY_RUN": "1", "EVAL_URL": "http://gpu7:9000/v1/"}).stdout)
    assert "serve" not in got and got["health"] == "http://gpu7:9000/health" and got["shard"] == "0/1"
    bad = run_script({"DRY_RUN": "1", "SERVER": "sglang", "MODEL": "m"}, check=False)
    assert bad.returncode == 2 and "SERVER must be vllm or transformers" in bad.stderr
    bad = run_script({"DRY_RUN": "1"}, check=False)
    assert bad.returncode != 0 and "set MODEL" in bad.stderr


# --------------------------------------------------------------------------- real runs, tiny exports



# --------------------------------------------------------------------------- the launcher


def test_launcher_chains_one_array_and_merge_per_checkpoint_after_training():
    from longctx.core.config import load_params
    from longctx.eval.launch import Checkpoint, sbatch_commands
    from longctx.eval.params import EvalConfig

    cfg = load_params(EvalConfig, PAPER)
    lines = sbatch_commands(cfg, PAPER, [Checkpoint("runs/paper/03_train/1M/hf", "ours-1m", "$job4")], shards=8,
                            tps=[4], windows=[1000000])
    p = "params/paper/04_evaluate.yaml"
    py = '"${LONGCTX_PYTHON:-.venv/bin/python}"'
    assert lines[2] == ("eval1=$(sbatch --parsable --dependency=afterok:$job4 --array=0-7 --job-name=longctx-eval-ours-1m "
                        "--gpus-per-node=4 --time=48:00:00 --output=\"${LONGCTX_RUNS:-runs}/slurm\"/%x-%A_%a.out "
                        "--export=ALL,MODEL=runs/paper/03_train/1M/hf,TP=4,"  # no PORT: each task picks a free one
                        f"MAX_MODEL_LEN=1000000,RUN_ID=ours-1m slurm/evaluate.sbatch {p})")
    assert lines[3] == ("sbatch --dependency=afterok:$eval1 --job-name=longctx-eval-merge --cpus-per-task=2 --mem=8G "
                        f"--time=1:00:00 --output=\"${{LONGCTX_RUNS:-runs}}/slurm\"/%x-%j.out --wrap='{py} -m longctx.evaluate --params {p} "
                        "--merge ours-1m'")
    # one server: no array, no merge (the job writes the run's table itself)
    one = sbatch_commands(cfg, PAPER, [Checkpoint("m", "r")], shards=1, tps=[1], windows=[4096])
    assert len(one) == 3 and "--array" not in one[2] and "afterok" not in one[2]


def test_launcher_after_training_evaluates_each_exported_stage_after_its_job(capsys):
    from longctx.eval.launch import main

    assert main(["--params", str(PAPER), "--after-train", str(ROOT / "params/paper/03_train.yaml"), "--shards", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    train = [line for line in lines if "slurm/train.sbatch" in line]
    evals = [line for line in lines if "slurm/evaluate.sbatch" in line]
    assert len(train) == 4 and train[0].startswith("job1=") and len(evals) == 4
    assert lines.index(train[-1]) < lines.index(evals[0])
    # each stage after its own training job, served at its own length with the TP that fits 80 GiB
    assert "--dependency=afterok:$job1 " in evals[0] and "MODEL=runs/paper/03_train/180K/hf" in evals[0]
    assert "MAX_MODEL_LEN=184320" in evals[0] and "TP=1," in evals[0]
    assert "--dependency=afterok:$job4 " in evals[3] and "MAX_MODEL_LEN=1048576" in evals[3] and "TP=4," in evals[3]


LLAMA31_8B_CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
                     "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
                     "vocab_size": 128256, "max_position_embeddings": 131072, "tie_word_embeddings": False,
                     "torch_dtype": "bfloat16"}


def test_tp_choice_and_projection_against_hand_computed_numbers(tmp_path):
    from longctx.core.config import from_mapping
    from longctx.eval.launch import choose_tp, model_shape, project
    from longctx.eval.params import EvalConfig

    (tmp_path / "config.json").write_text(json.dumps(LLAMA31_8B_CONFIG))
    shape = model_shape(tmp_path)
    assert abs(shape.params - 8.03e9) / 8.03e9 < 0.001          # Llama-3.1-8B: 8,030,261,248 parameters
    assert shape.kv_bytes_per_token == 131072                      # 2 x 32 layers x 8 heads x 128 x 2 bytes
    # 1M tokens: 122.1 GiB of KV + 15.0 GiB of weights. 80 GiB x 0.9 - 4 = 68 GiB usable:
    # TP=2 needs 7.48 + 61.0 = 68.5 (no), TP=4 needs 3.74 + 30.5 = 34.3 (yes)
    tp, gib = choose_tp(shape, 1_000_000, 80.0)
    assert tp == 4 and abs(gib - 34.26) < 0.01
    assert choose_tp(shape, 131072, 80.0)[0] == 1                  # 15.0 + 16.0 GiB
    assert choose_tp(shape, 1_000_000, 141.0)[0] == 2              # H200: 7.48 + 61.0 <= 122.9
    with pytest.raises(ValueError, match="do not fit"):
        choose_tp(shape, 8_000_000, 80.0)
    # one RULER group of 50 samples at 131072 tokens (niah_single_1: 128 new tokens), one server of TP=1
    cfg = from_mapping(EvalConfig, {"benchmarks": ["ruler"], "ruler_tasks": ["niah_single_1"],
                                    "ruler_lengths": [131072], "n_samples": 50})
    row, = project(cfg, shape, shards=1, tp=1, window=131072, prefill_tflops=400, decode_gbps=2000)
    L = 131072
    prefill = L * (2 * shape.params + 2 * 32 * 32 * 128 * L) / 400e12
    decode = 128 * (shape.params * 2 + 131072 * L) / 2000e9
    assert row["requests"] == 50 and row["prompt_tokens"] == 50 * L and row["completion_tokens"] == 50 * 128
    assert abs(row["hours"] - 50 * (prefill + decode) / 3600) < 1e-9


def test_shards_cover_the_work_list_once_and_balance_long_groups():
    from longctx.core.config import load_params
    from longctx.eval.params import EvalConfig
    from longctx.eval.shards import assign, group_weight, work_list

    cfg = load_params(EvalConfig, PAPER)
    items = work_list(cfg)
    # RULER, IB generated + hub, LongBench, MMLU, BABILong (5 tasks x 12 lengths)
    assert len(items) == 13 * 9 + 6 * 1 + 6 + 21 + 1 + 5 * 12
    for n in (1, 3, 8):
        shard_of = assign(items, n, cfg)
        assert sorted(set(shard_of)) == list(range(n))
        load = [sum(group_weight(i, cfg) for i, s in zip(items, shard_of) if s == k) for k in range(n)]
        heaviest = max(group_weight(i, cfg) for i in items)
        assert max(load) - min(load) <= heaviest                   # LPT: within one group of each other
    # beyond the window, a group weighs nothing (the runner skips it without a request)
    assert all(s == 0 for s in assign(items, 1, cfg, 131072))
    assert group_weight(next(i for i in items if i.length == 1_000_000), cfg, 131072) == 0


# --------------------------------------------------------------------------- prepared-sample keys


def test_prepared_samples_follow_their_source_file_and_generator(tmp_path, monkeypatch):
    """Switching squad_path (or changing the file in place, or the generator's code) prepares anew;
    the same inputs reuse the cached file."""
    from test_eval_fixtures import corpus_dir, squad_rows, write_jsonl

    from longctx.core.tokenizer import load_tokenizer
    from longctx.eval import ruler
    from longctx.eval.ruler import RulerContext, prepare_ruler

    tok = load_tokenizer("llama3")
    corpus = str(corpus_dir(tmp_path))
    rows_a = squad_rows()
    rows_b = [{**r, "context": r["context"].replace("Elton", "Knightley"),
               "answers": {**r["answers"], "text": [t.replace("Elton", "Knightley") for t in r["answers"]["text"]]}}
              for r in rows_a]
    file_a, file_b = write_jsonl(tmp_path / "a.jsonl", rows_a), write_jsonl(tmp_path / "b.jsonl", rows_b)

    def refs(path: Path) -> list[str]:
        ctx = RulerContext(tok, corpus, tmp_path / "cache", True, str(path), "")
        return [r for s in prepare_ruler("qa_1", 2048, 1900, 2, 0, ctx) for r in s.references]

    from_a = refs(file_a)
    assert all("Elton" in r for r in from_a)
    assert all("Knightley" in r for r in refs(file_b))          # another file: its own samples
    assert len(list((tmp_path / "cache" / "ruler").glob("qa_1-*.jsonl"))) == 2
    assert refs(file_a) == from_a                                 # the same file: the cached samples
    write_jsonl(file_a, rows_b)                                   # the same path, b's content
    assert all("Knightley" in r for r in refs(file_a))            # keyed by content: b's samples
    assert len(list((tmp_path / "cache" / "ruler").glob("qa_1-*.jsonl"))) == 2
    monkeypatch.setattr(ruler, "generator_version", lambda family: "changed-code")
    refs(file_a)
    assert len(list((tmp_path / "cache" / "ruler").glob("qa_1-*.jsonl"))) == 3


def test_answer_cache_is_named_by_the_served_weights(tmp_path):
    from longctx.core.config import from_mapping
    from longctx.core.fingerprint import folder_fingerprint, write_fingerprint
    from longctx.eval.params import EvalConfig
    from longctx.eval.runner import answer_cache

    folders = []
    for name, weights in (("a", b"\x00" * 64), ("b", b"\x01" * 64)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(weights)
        folders.append(folder)
    write_fingerprint(folders[0])  # written at export; b has none and is digested on the fly

    def cache(**kw):
        return answer_cache(from_mapping(EvalConfig, {"output_dir": str(tmp_path / "out"), "run_id": "r1",
                                                      "llm_model": "ours", **kw}))

    (dir_a, fp_a), (dir_b, fp_b) = cache(model_path=str(folders[0])), cache(model_path=str(folders[1]))
    assert fp_a.startswith("sha256:") and fp_a != fp_b and dir_a != dir_b and dir_a.parent == tmp_path / "out" / "cache"
    assert fp_b == folder_fingerprint(folders[1]) == write_fingerprint(folders[1])
    (folders[0] / "model.safetensors").write_bytes(b"\x02" * 64)  # retrained in place: the record is stale
    assert cache(model_path=str(folders[0]))[1] not in (fp_a, fp_b)
    assert cache(model_fingerprint="sha256:abc")[0] == tmp_path / "out" / "cache" / "abc"
    # no fingerprint: this run's answers only, unless the name is trusted on purpose
    assert cache() == (tmp_path / "out" / "r1" / "cache", "")
    assert cache(reuse_answers_by_name=True) == (tmp_path / "out" / "cache" / "by-name", "")
    with pytest.raises(FileNotFoundError, match="model_path"):
        cache(model_path=str(tmp_path / "nowhere"))


def test_a_malformed_local_file_is_named_in_the_skip_reason(tmp_path):
    """A malformed local file skips its group (the runner logs benchmark/task with this reason)
    instead of a datasets traceback ending the run."""
    from longctx.eval.infinitebench import load_infinitebench_hub
    from longctx.eval.hub import Unavailable

    bad = tmp_path / "en_qa.jsonl"
    bad.write_text('{"id": 0, "context": "unterminated\n')
    with pytest.raises(Unavailable, match=f"cannot read local file {bad}"):
        load_infinitebench_hub("longbook_qa_eng", 0, str(bad))


def test_launcher_dry_run_projects_each_server_without_torch(tmp_path):
    """The launcher's dry run from the base install: the export's config.json gives the shape."""
    export = tmp_path / "1M" / "hf"
    export.mkdir(parents=True)
    (export / "config.json").write_text(json.dumps({**LLAMA31_8B_CONFIG, "max_position_embeddings": 1048576}))
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_BLOCK_TORCH)
    out = subprocess.run([sys.executable, "-m", "longctx.eval.launch", "--params", str(PAPER), "--checkpoint",
                          str(export), "--shards", "8", "--dry-run"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT / 'lib'}"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    # hub sets (their own lengths) are evaluated too: the server gets the model's whole window
    assert "1M (" in lines[1] and "window 1,048,576" in lines[1] and "8 servers of TP=4 GPUs" in lines[1]
    rows = [line.split() for line in lines[3:11]]
    assert [r[0] for r in rows] == [f"{i}/8" for i in range(8)]
    assert sum(int(r[1]) for r in rows) == 13 * 9 + 6 + 6 + 21 + 1 + 5 * 12   # every group on one server (BABILong: 5 x 12)
    assert lines[-1].strip().startswith("wall time")
