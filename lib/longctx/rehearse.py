"""The paper's SLURM job chain at toy scale, submitted to a real SLURM through the real job scripts.

    ./dev rehearse                     # starts a one-node SLURM here (./dev slurm start), then this
    python -m longctx.rehearse [--keep]

Each stage's jobs are the lines the project's launchers render for a cluster user
(``longctx.generate.launch``, ``longctx.train.launch``, ``longctx.eval.launch``), run by bash with
``sbatch``; only the cluster settings file differs (``runs/rehearse/cluster.env`` instead of the
user's ``slurm/cluster.env``), and stages with no launcher (concatenation, figures) are one
``sbatch --wrap`` each. Stages follow one another once the previous one's jobs are finished and its
outputs meet their contract (docs/CONTRACTS.md), so a failure stops the rehearsal at the stage
that caused it, with the job's log:

1. corpus preparation -> generation array (2 tasks, one at a time) -> merge. Each task serves
   the embedded llama.cpp model (SmolLM2-135M, CPU) where a cluster runs vLLM: the one switch is
   ``--server llamacpp`` of the launcher (``SERVER=llamacpp`` of ``slurm/generate_vllm.sbatch``);
2. concatenation, as a job;
3. two training stages chained ``afterok`` (CPU, gloo, 2 processes, Ulysses sp=2). Once the
   second has logged step 10 of 40 it gets SLURM's time-limit warning, USR1 to its batch shell
   (``scancel --batch --signal=USR1``: what ``--signal=B:USR1@1800`` makes SLURM send; sent on
   progress rather than on the clock so it lands mid-stage on a machine of any speed):
   checkpoint, ``scontrol requeue``, resume. Each stage exports ``hf/``;
4. per checkpoint, what ``python -m longctx.eval.launch`` prints: an array of 2 shards of
   ``slurm/evaluate.sbatch`` serving the tiny export with the project's CPU stand-in for vLLM
   (the switch ``SERVER=transformers``) and a merge job;
5. figures, as a job.

Then it checks that ``sacct`` reports every job COMPLETED and the second training stage
REQUEUED at least once, and that the resumed stage equals an uninterrupted run of the same stage
(launched here with torchrun, no SLURM): the same loss at every step and the same final weights.
Outputs go to ``runs/rehearse/``, job logs to ``runs/slurm/``; both are printed per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .core.config import project_root

__all__ = ["main", "RUN", "Job", "sacct", "submit", "wait"]

RUN = "runs/rehearse"        # relative to the project root: the jobs run from there
LOGS = "runs/slurm"
WARN_AT_STEP = 10            # s2 gets SLURM's time-limit warning once it has logged this step

GENERATE = {
    "corpus": "austen", "max_documents": 2, "max_document_tokens": 256,
    "corpus_shards_dir": f"{RUN}/corpus_shards", "output_dir": f"{RUN}/01_generate_qa",
    "small_chunk_tokens": 128, "medium_chunk_tokens": 256, "n_hierarchical": 2, "n_global_questions": 1,
    "n_diverse": 2, "max_qa_attempts": 2, "max_qa_tokens": 128, "max_summary_tokens": 96,
    "llm_base_url": "", "llm_model": "SmolLM2-135M-Instruct", "llm_api_key_env": "",
    "max_concurrency": 1, "seed": 0,
}
CONCATENATE = {
    "qa_path": f"{RUN}/01_generate_qa/qa.jsonl", "output_dir": f"{RUN}/02_concatenate",
    "stages": [{"name": "s1", "target_tokens": 512, "n_samples": 4, "docs_per_sample": 1},
               {"name": "s2", "target_tokens": 1024, "n_samples": 4, "docs_per_sample": 2}],
    "n_diverse_per_doc": 1, "n_revisit": 1, "revisit_probability": 0.6, "seed": 0,
    "fill_fraction": 0.5,        # documents of ~256 tokens with a few questions: whole ones fill half a sample
}
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 128256}
# slurm_time above train.sbatch's 30-minute warning margin (--signal=B:USR1@1800): a shorter limit
# gets the warning at its start and stops after every step
TRAIN = {
    "profile": "paper", "model": "tiny", "tiny": TINY, "output_dir": f"{RUN}/03_train",
    "stages": [
        {"name": "s1", "samples": f"{RUN}/02_concatenate", "samples_stage": "s1", "seq_len": 512,
         "rope": {"type": "default", "theta": 10000.0}, "sp": 2, "nodes": 1, "global_batch": 2, "epochs": 1,
         "warmup_steps": 1, "slurm_time": "01:00:00"},
        {"name": "s2", "samples": f"{RUN}/02_concatenate", "samples_stage": "s2", "seq_len": 1024,
         "rope": {"type": "default", "theta": 30000.0}, "sp": 2, "nodes": 1, "global_batch": 2, "epochs": 100,
         "max_steps": 40, "warmup_steps": 1, "slurm_time": "01:00:00"},
    ],
    "lr": 0.003, "loss_chunk_tokens": 256, "checkpoint_every": 1000, "log_every": 10, "gpus_per_node": 2,
    "export_hf": True, "seed": 0,
}
EVALUATE = {
    "model_name": "rehearse", "backend": "openai", "llm_base_url": "http://127.0.0.1:1/v1", "llm_model": "rehearse",
    "llm_server": "auto", "tokenizer": "llama3", "benchmarks": ["ruler"], "ruler_tasks": ["niah_single_1"],
    "ruler_lengths": [256, 512], "n_samples": 1, "max_new_tokens_cap": 8, "output_dir": f"{RUN}/04_evaluate",
    "cache_dir": f"{RUN}/04_evaluate/samples",
}
FIGURES = {"results": [f"{RUN}/04_evaluate/results.csv"], "include_reported": True,
           "output_dir": f"{RUN}/figures", "formats": ["png"]}


@dataclass
class Job:
    """One job (or array task) as sacct reports it; ``records`` lists every run, requeues included."""
    job_id: str
    name: str
    states: list[str] = field(default_factory=list)
    exit_codes: list[str] = field(default_factory=list)

    @property
    def final(self) -> str:
        return self.states[-1] if self.states else "UNKNOWN"


def _run(cmd: list[str], **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def submit(lines: list[str], root: Path, env_file: str) -> list[str]:
    """Run launcher-rendered shell ``lines`` from ``root`` with bash; returns the submitted job ids.

    The lines run as rendered, except that ``source slurm/cluster.env`` reads ``env_file``
    instead (the rehearsal must not touch the user's own settings). ``sbatch`` is wrapped to
    record each job id it prints; what it prints is passed on unchanged.
    """
    record = tempfile.NamedTemporaryFile("w+", suffix=".jobs", delete=False)
    record.close()
    script = ["set -euo pipefail",
              'sbatch() { local out; out=$(command sbatch "$@") || return $?; echo "$out"; '
              f'echo "$out" | grep -oE "[0-9]+" | head -n 1 >> {record.name}; }}']
    for line in lines:
        script.append(line.replace("source slurm/cluster.env", f"source {env_file}"))
    print("\n".join("  $ " + line for line in script[2:]), flush=True)
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=root, capture_output=True, text=True)
    ids = Path(record.name).read_text().split()
    os.unlink(record.name)
    if result.returncode:
        raise RuntimeError(f"submitting failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    return ids


def _squeue(ids: list[str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %r"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def wait(ids: list[str], what: str, timeout_s: float, during=None) -> None:
    """Until no job of ``ids`` is pending or running; prints their states when they change and
    calls ``during()`` at every poll."""
    deadline = time.monotonic() + timeout_s
    shown = None
    while True:
        queued = _squeue(ids)
        if not queued:
            return
        if during is not None:
            during()
        stuck = [line for line in queued if "DependencyNeverSatisfied" in line]
        if stuck:   # an earlier job of the chain failed: its dependants would wait forever
            subprocess.run(["scancel", *ids], check=False)
            print(f"    {what}: {'; '.join(stuck)}: cancelled the rest of the chain", flush=True)
            return
        state = "; ".join(queued)
        if state != shown:
            print(f"    [{time.strftime('%H:%M:%S')}] {what}: {state}", flush=True)
            shown = state
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: jobs {ids} still queued after {timeout_s:.0f} s: {state}")
        time.sleep(2)


def sacct(ids: list[str], settle_s: float = 60) -> dict[str, Job]:
    """Every run of every job (``sacct -D``: requeued runs too), array tasks one by one.

    slurmdbd writes a job's end a moment after the job leaves the queue, so this waits up to
    ``settle_s`` for no job to be shown RUNNING or PENDING any more."""
    deadline = time.monotonic() + settle_s
    while True:
        out = _run(["sacct", "-D", "-X", "-P", "-n", "-j", ",".join(ids), "-o", "JobID,JobName,State,ExitCode"])
        jobs: dict[str, Job] = {}
        for line in out.splitlines():
            job_id, name, state, code = line.split("|")
            job = jobs.setdefault(job_id, Job(job_id, name))
            job.states.append(state.split()[0])
            job.exit_codes.append(code)
        if not any(j.final in ("RUNNING", "PENDING", "REQUEUED") for j in jobs.values()) or time.monotonic() > deadline:
            return jobs
        time.sleep(2)


def _log_of(job_id: str) -> str:
    """The job's log: its StdOut as SLURM expanded it while SLURM remembers the job, else the file
    under runs/slurm/ named after it (the project's scripts log as %x-%j or %x-%A_%a)."""
    out = subprocess.run(["scontrol", "show", "job", job_id.split("_")[0]], capture_output=True, text=True).stdout
    for line in out.splitlines():
        found = re.search(r"StdOut=(\S+)", line)
        if found and "_" not in job_id:
            return found.group(1)
    pattern = f"*-{job_id}.out"
    hits = sorted((project_root() / LOGS).glob(pattern))
    return str(hits[0]) if hits else f"{LOGS}/{pattern}"


def _tail(path: str, n: int = 40) -> str:
    p = Path(path)
    if not p.is_file():
        return f"(no log at {path})"
    return "".join(p.read_text(errors="replace").splitlines(keepends=True)[-n:])


class Rehearsal:
    def __init__(self, root: Path, timeout_s: float):
        self.root = root
        self.run = root / RUN
        self.timeout_s = timeout_s
        self.jobs: dict[str, list[str]] = {}      # stage -> job ids
        self.report: list[tuple[str, str, str]] = []   # (stage, outputs, logs)
        self.started = time.monotonic()

    def path(self, name: str) -> str:
        return f"{RUN}/{name}"

    def write(self, name: str, params: dict) -> str:
        (self.run / name).write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        return self.path(name)

    def stage(self, name: str, lines: list[str], outputs: str, during=None) -> list[str]:
        t0 = time.monotonic()
        print(f"\n== {name}", flush=True)
        ids = submit(lines, self.root, self.path("cluster.env"))
        self.jobs[name] = ids
        wait(ids, name, self.timeout_s, during=during and (lambda: during(ids)))
        jobs = sacct(ids)
        bad = [j for j in jobs.values() if j.final != "COMPLETED"]
        logs = sorted({_log_of(j) for j in jobs})
        if bad or not jobs:
            for j in bad:
                print(f"  job {j.job_id} ({j.name}) ended {j.final} (exit {j.exit_codes[-1]}); its log "
                      f"{_log_of(j.job_id)}:\n{_tail(_log_of(j.job_id))}", file=sys.stderr)
            raise RuntimeError(f"{name}: {len(bad)} job(s) did not complete: "
                               + ", ".join(f"{j.job_id} {j.final}" for j in bad) if jobs else "no job in sacct")
        print(f"  {name}: {len(jobs)} job(s) COMPLETED in {time.monotonic() - t0:.0f} s; outputs {outputs}; "
              f"logs {' '.join(logs)}", flush=True)
        self.report.append((name, outputs, " ".join(logs)))
        return ids


def _settings(root: Path, run: Path) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "cluster.env").write_text(
        "# The rehearsal's cluster settings (a user's are slurm/cluster.env; see cluster.env.example).\n"
        "SBATCH_PARTITION=debug\n"
        f"LONGCTX_PYTHON={sys.executable}\n"
        "OMP_NUM_THREADS=1\n"
        "PYTHONUNBUFFERED=1\n"
        f"RDZV_PORT={_free_port()}\n", encoding="utf-8")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_generation(run: Path) -> str:
    shards = json.loads((run / "corpus_shards" / "manifest.json").read_text())
    assert shards["shard_count"] == 2 and shards["documents_per_file"] == [1, 1], f"corpus shards manifest: {shards}"
    records = [json.loads(line) for line in (run / "01_generate_qa" / "qa.jsonl").read_text().splitlines() if line]
    assert len(records) == 2, f"qa.jsonl holds {len(records)} documents, expected 2 (one per array task)"
    for rec in records:
        missing = {"id", "source", "title", "text", "tokenizer", "n_tokens", "chunks", "sections", "summaries",
                   "hierarchical_qa", "diverse_qa"} - set(rec)
        assert not missing, f"qa.jsonl document {rec.get('id')}: keys {sorted(missing)} missing"
        spans = [(c["token_start"], c["token_end"]) for c in rec["chunks"]]
        assert spans[0][0] == 0 and spans[-1][1] == rec["n_tokens"] and all(
            a[1] == b[0] for a, b in zip(spans, spans[1:])), f"{rec['id']}: chunk spans do not cover the text"
    for i in range(2):
        manifest = json.loads((run / "01_generate_qa" / "shards" / f"{i:05d}-of-00002" / "manifest.json").read_text())
        assert manifest["shard"] == f"{i}/2", manifest["shard"]
    return f"{len(records)} documents, " + ", ".join(
        f"{r['id']}: {len(r['hierarchical_qa'])} hierarchical + {len(r['diverse_qa'])} diverse QA" for r in records)


def check_concatenation(run: Path) -> str:
    import numpy as np

    from .concat.samples import open_samples

    out = []
    for spec in CONCATENATE["stages"]:
        samples = open_samples(run / "02_concatenate", spec["name"])
        assert len(samples) == spec["n_samples"], f"{spec['name']}: {len(samples)} samples"
        for i in range(len(samples)):
            item = samples[i]
            assert len(item["input_ids"]) == len(item["labels"]) <= spec["target_tokens"]
            answers = item["labels"] != -100
            assert answers.any() and np.array_equal(item["labels"][answers], item["input_ids"][answers])
        out.append(f"{spec['name']}: {len(samples)} samples")
    return ", ".join(out)


def check_training(run: Path, root: Path) -> str:
    from .train import checkpoint
    from .train.log import read_log

    out = []
    for stage in TRAIN["stages"]:
        folder = run / "03_train" / stage["name"]
        rows = read_log(folder / "train_log.csv")
        assert checkpoint.is_complete(folder / "final"), f"{folder}/final is not a complete checkpoint"
        assert (folder / "hf" / "config.json").is_file(), f"{folder}/hf: no transformers export"
        steps = [r["step"] for r in rows]
        assert steps == list(range(1, len(steps) + 1)), f"{folder}/train_log.csv: steps {steps[:5]}..."
        out.append(f"{stage['name']}: {len(rows)} steps, loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
    return ", ".join(out)


def final_weights(folder: Path) -> dict:
    """The fp32 weights of a DCP checkpoint folder, read without a process group."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(folder), f"{tmp}/w.pt")
        state = torch.load(f"{tmp}/w.pt", weights_only=False)
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value
    walk("", state)
    return flat


def check_resume_equals_uninterrupted(run: Path, root: Path, params_path: str) -> str:
    """Train the requeued stage again, uninterrupted, without SLURM (torchrun here) from the same
    starting weights; the loss of every step and the final weights must be those of the run that
    was stopped, requeued and resumed."""
    import torch

    from .core.config import load_params
    from .train.config import TrainConfig
    from .train.launch import launch_local
    from .train.log import read_log

    ref_dir = run / "03_train_uninterrupted"
    shutil.rmtree(ref_dir, ignore_errors=True)
    (ref_dir / "s1").mkdir(parents=True)
    shutil.copytree(run / "03_train" / "s1" / "final", ref_dir / "s1" / "final")
    cfg = load_params(TrainConfig, root / params_path, {"output_dir": f"{RUN}/03_train_uninterrupted",
                                                        "export_hf": False})
    print("  uninterrupted reference of s2 (torchrun, 2 processes, no SLURM) ...", flush=True)
    launch_local(cfg, stage="s2", echo=False, timeout_s=1800)
    resumed = read_log(run / "03_train" / "s2" / "train_log.csv")
    straight = read_log(ref_dir / "s2" / "train_log.csv")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight], "the two runs logged different steps"
    # bitwise: the same ops in the same order, on the same machine with the same threads (measured:
    # equal to the bit); a changed data order, schedule or optimizer state after the resume shows here
    torch.testing.assert_close(torch.tensor([r["loss"] for r in resumed], dtype=torch.float64),
                               torch.tensor([r["loss"] for r in straight], dtype=torch.float64), rtol=0, atol=0)
    a, b = final_weights(run / "03_train" / "s2" / "final"), final_weights(ref_dir / "s2" / "final")
    assert a.keys() == b.keys() and a, f"final checkpoints hold different tensors: {sorted(a.keys() ^ b.keys())}"
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")
    return (f"s2 resumed = uninterrupted, bitwise: {len(resumed)} step losses, {len(a)} final fp32 tensors "
            f"(reference: {RUN}/03_train_uninterrupted)")


def evaluation_lines(root: Path, params_path: str) -> list[str]:
    """What ``python -m longctx.eval.launch`` prints for the two checkpoints (an array of 2 shards
    of ``slurm/evaluate.sbatch`` and a merge job each), with ``SERVER=transformers``: the CPU
    stand-in for vLLM serving the tiny export. On this one node every job takes the whole node
    (``SBATCH_EXCLUSIVE``), as the tasks of a cluster each hold their own node and port."""
    cmd = [sys.executable, "-m", "longctx.eval.launch", "--params", params_path, "--shards", "2", "--tp", "1",
           "--port", str(_free_port()), "--time", "0:30:00"]
    for stage in TRAIN["stages"]:
        cmd += ["--checkpoint", f"{RUN}/03_train/{stage['name']}/hf=rehearse-{stage['name']}"]
    print("  $ " + " ".join(cmd[1:]), flush=True)
    lines = _run(cmd, cwd=root).splitlines()
    lines.insert(2, "export SERVER=transformers SBATCH_EXCLUSIVE=exclusive   # rehearsal: CPU stand-in server, "
                    "one job per node")
    return lines


def figures_lines() -> list[str]:
    py = '"${LONGCTX_PYTHON:-.venv/bin/python}"'
    return [f"mkdir -p {LOGS}", "set -a; source slurm/cluster.env; set +a",
            f"sbatch --parsable --job-name=longctx-figures --cpus-per-task=1 --mem=4G --time=0:30:00 "
            f"--output={LOGS}/%x-%j.out --wrap='{py} -m longctx.figures --params {RUN}/05_figures.yaml'"]


def check_evaluation(run: Path) -> str:
    from .eval.results import read_results

    table = read_results(run / "04_evaluate" / "results.csv")
    out = []
    for stage in TRAIN["stages"]:
        rows = table[table["run_id"] == f"rehearse-{stage['name']}"]
        assert len(rows) >= 1 and rows["score"].notna().all(), \
            f"{run}/04_evaluate/results.csv: no scored row for checkpoint {stage['name']} ({len(rows)} rows)"
        out.append(f"{stage['name']}: {len(rows)} scored row(s)")
    figures = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert figures, f"{run}/figures: no figure written"
    return ", ".join(out) + f"; figures {', '.join(figures)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.rehearse", description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one stage's jobs may take")
    parser.add_argument("--from", dest="first", type=int, default=1, choices=(1, 2, 3, 4),
                        help="start at this stage, keeping the earlier stages' outputs of the last rehearsal "
                             "(their contracts are checked again; the summary says they were not rerun)")
    args = parser.parse_args(argv)
    root = project_root()
    if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode:
        print("error: no SLURM here (sbatch/sinfo): start the one-node cluster with ./dev slurm start (root, "
              "Debian)", file=sys.stderr)
        return 2
    run = root / RUN
    if args.first == 1:
        shutil.rmtree(run, ignore_errors=True)
    else:
        for stage in range(args.first, 5):
            for name in {2: ["02_concatenate"], 3: ["03_train", "03_train_uninterrupted"],
                         4: ["04_evaluate", "figures"]}.get(stage, []):
                shutil.rmtree(run / name, ignore_errors=True)
    _settings(root, run)
    (root / LOGS).mkdir(parents=True, exist_ok=True)
    r = Rehearsal(root, args.timeout)
    try:
        return _rehearse(r, args.first, root, run)
    except (AssertionError, RuntimeError, TimeoutError, FileNotFoundError) as err:
        print(f"\nREHEARSAL FAILED after {time.monotonic() - r.started:.0f} s: {err}", file=sys.stderr)
        for name, outputs, logs in r.report:
            print(f"  passed: {name}\n      outputs: {outputs}\n      logs:    {logs}", file=sys.stderr)
        return 1


def _rehearse(r: Rehearsal, first: int, root: Path, run: Path) -> int:
    from .core.config import load_params
    from .generate import launch as generate_launch
    from .generate.params import GenerateParams
    from .train import launch as train_launch
    from .train.config import TrainConfig

    # 1. corpus preparation -> generation array (llama.cpp stand-in) -> merge
    gen_path = r.write("01_generate_qa.yaml", GENERATE)
    if first > 1:
        print(f"stages 1-{first - 1}: outputs of the last rehearsal, not rerun", flush=True)
        r.report.append((f"stages 1-{first - 1}", "NOT RERUN: kept from the last rehearsal (--from)", ""))
    if first <= 1:
        lines = generate_launch.sbatch_commands(load_params(GenerateParams, root / gen_path), root / gen_path,
                                                shards=2, model="", tp=1, port=_free_port(), servers=1, time="00:30:00",
                                                server="llamacpp")
        r.stage("1 generate (prepare -> array of 2 -> merge)", lines, f"{RUN}/corpus_shards, {RUN}/01_generate_qa")
    print("  contract:", check_generation(run), flush=True)

    # 2. concatenation (no launcher: one job)
    if first <= 2:
        cat_path = r.write("02_concatenate.yaml", CONCATENATE)
        py = '"${LONGCTX_PYTHON:-.venv/bin/python}"'
        lines = [f"mkdir -p {LOGS}", "set -a; source slurm/cluster.env; set +a",
                 f"sbatch --parsable --job-name=longctx-concatenate --cpus-per-task=2 --mem=8G --time=1:00:00 "
                 f"--output={LOGS}/%x-%j.out --wrap='{py} -m longctx.concatenate --params {cat_path}'"]
        r.stage("2 concatenate", lines, f"{RUN}/02_concatenate")
    print("  contract:", check_concatenation(run), flush=True)

    # 3. two training stages chained afterok; s2 meets its time limit's warning mid-stage
    if first <= 3:
        train_path = r.write("03_train.yaml", TRAIN)
        cfg = load_params(TrainConfig, root / train_path)
        lines = train_launch.sbatch_commands(cfg, train_path)
        warned = []

        def warn_mid_stage(ids: list[str]) -> None:
            """SLURM's time-limit warning for s2 once it has logged step WARN_AT_STEP: USR1 to the
            job's batch shell, as ``#SBATCH --signal=B:USR1@1800`` makes SLURM send it."""
            log = Path(_log_of(ids[1]))
            log = log if log.is_absolute() else root / log
            if not warned and log.is_file() and f"] step {WARN_AT_STEP}/" in log.read_text(errors="replace"):
                _run(["scancel", "--batch", "--signal=USR1", ids[1]])
                warned.append(time.strftime("%H:%M:%S"))
                print(f"    [{warned[0]}] s2 logged step {WARN_AT_STEP}: sent it the time-limit warning "
                      f"(scancel --batch --signal=USR1 {ids[1]})", flush=True)

        ids = r.stage("3 train (s1 -> s2 afterok; s2 warned, checkpointed, requeued, resumed)", lines,
                      f"{RUN}/03_train", during=warn_mid_stage)
        runs = sacct(ids)
        s2 = runs[ids[1]]
        print(f"  sacct: s1 {' -> '.join(runs[ids[0]].states)}, s2 {' -> '.join(s2.states)}", flush=True)
        assert warned, f"s2 finished before it logged step {WARN_AT_STEP}: the warning was never sent"
        assert s2.states.count("REQUEUED") >= 1, f"s2 was never requeued: sacct {s2.states}"
        s2_log = Path(_log_of(ids[1])).read_text(errors="replace") if Path(_log_of(ids[1])).is_file() else ""
        assert "stop requested" in s2_log and "resumed from" in s2_log, \
            f"s2's log ({_log_of(ids[1])}) shows no checkpoint-and-stop followed by a resume"
        print("  resume:", check_resume_equals_uninterrupted(run, root, train_path), flush=True)
    print("  contract:", check_training(run, root), flush=True)

    # 4. one evaluation job per checkpoint (CPU stand-in server for vLLM) -> 5. figures
    eval_path = r.write("04_evaluate.yaml", EVALUATE)
    r.write("05_figures.yaml", FIGURES)
    r.stage("4 evaluate (per checkpoint: array of 2 shards -> merge)", evaluation_lines(root, eval_path),
            f"{RUN}/04_evaluate")
    r.stage("5 figures", figures_lines(), f"{RUN}/figures")
    print("  contract:", check_evaluation(run), flush=True)

    print(f"\n== rehearsal: {time.monotonic() - r.started:.0f} s")
    every = [i for ids in r.jobs.values() for i in ids]
    for job in sacct(every).values():
        print(f"  {job.job_id:>8} {job.name:<28} {' -> '.join(job.states)}")
    for name, outputs, logs in r.report:
        print(f"  {name}\n      outputs: {outputs}\n      logs:    {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
