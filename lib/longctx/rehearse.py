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
The evaluation's four tasks share the node without ``--exclusive``, each on a port it picks when
it starts; the check reads the ports from their logs. Outputs go to ``runs/rehearse/`` and job
logs to ``runs/slurm/``, both under the run root (``$LONGCTX_RUNS`` when set); both are printed
per stage. SLURM plumbing: :mod:`longctx.rehearse_jobs`; the contracts checked between stages:
:mod:`longctx.rehearse_checks`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .core.config import project_root, resolve_path
from .rehearse_checks import (check_concatenation, check_evaluation, check_generation,
                              check_resume_equals_uninterrupted, check_training)
from .rehearse_jobs import Job, free_port, log_of, run_checked, sacct, submit, tail, wait

__all__ = ["main", "RUN", "Job", "sacct", "submit", "wait"]

RUN = "runs/rehearse"        # under the run root ($LONGCTX_RUNS when set): the params name it so
LOGS = '"${LONGCTX_RUNS:-runs}/slurm"'  # the jobs' logs, as the launchers write them
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


class Rehearsal:
    def __init__(self, root: Path, timeout_s: float):
        self.root = root
        self.run = resolve_path(RUN)
        self.timeout_s = timeout_s
        self.jobs: dict[str, list[str]] = {}      # stage -> job ids
        self.report: list[tuple[str, str, str]] = []   # (stage, outputs, logs)
        self.started = time.monotonic()

    def path(self, name: str) -> str:
        """``name`` in the run folder, as the jobs (run from the project root) name it."""
        return _shown(self.run / name, self.root)

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
        logs = sorted({log_of(j) for j in jobs})
        if bad or not jobs:
            for j in bad:
                print(f"  job {j.job_id} ({j.name}) ended {j.final} (exit {j.exit_codes[-1]}); its log "
                      f"{log_of(j.job_id)}:\n{tail(log_of(j.job_id))}", file=sys.stderr)
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
        f"RDZV_PORT={free_port()}\n", encoding="utf-8")


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else absolute (``LONGCTX_RUNS`` elsewhere)."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def evaluation_lines(root: Path, params_path: str) -> list[str]:
    """What ``python -m longctx.eval.launch`` prints for the two checkpoints (an array of 2 shards
    of ``slurm/evaluate.sbatch`` and a merge job each), with ``SERVER=transformers``: the CPU
    stand-in for vLLM serving the tiny export. The four tasks share this one node, as tasks without
    ``--exclusive`` share a cluster's nodes: each serves on a port it picks and reserves when it
    starts (``slurm/ports.sh``)."""
    cmd = [sys.executable, "-m", "longctx.eval.launch", "--params", params_path, "--shards", "2", "--tp", "1",
           "--time", "0:30:00"]
    for stage in TRAIN["stages"]:
        cmd += ["--checkpoint", f"{RUN}/03_train/{stage['name']}/hf=rehearse-{stage['name']}"]
    print("  $ " + " ".join(cmd[1:]), flush=True)
    lines = run_checked(cmd, cwd=root).splitlines()
    lines.insert(2, "export SERVER=transformers   # rehearsal: the CPU stand-in server for vLLM")
    return lines


def figures_lines(params_path: str) -> list[str]:
    py = '"${LONGCTX_PYTHON:-.venv/bin/python}"'
    return ["set -a; source slurm/cluster.env; set +a", f"mkdir -p {LOGS}",
            f"sbatch --parsable --job-name=longctx-figures --cpus-per-task=1 --mem=4G --time=0:30:00 "
            f"--output={LOGS}/%x-%j.out --wrap='{py} -m longctx.figures --params {params_path}'"]


def check_own_ports(task_ids: list[str]) -> str:
    """The evaluation tasks shared this node (no --exclusive): each served on a port of its own."""
    ports = {}
    for task in task_ids:
        log = Path(log_of(task))
        found = re.search(r"server healthy at http://127\.0\.0\.1:(\d+)/health", tail(str(log), 10_000))
        assert found, f"{log}: no 'server healthy at ...' line naming the task's port"
        ports[task] = found.group(1)
    assert len(set(ports.values())) == len(ports), f"evaluation tasks shared a port: {ports}"
    return ", ".join(f"{task} on {port}" for task, port in sorted(ports.items()))


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
    run = resolve_path(RUN)
    if args.first == 1:
        shutil.rmtree(run, ignore_errors=True)
    else:
        for stage in range(args.first, 5):
            for name in {2: ["02_concatenate"], 3: ["03_train", "03_train_uninterrupted"],
                         4: ["04_evaluate", "figures"]}.get(stage, []):
                shutil.rmtree(run / name, ignore_errors=True)
    _settings(root, run)
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
                                                shards=2, model="", tp=1, servers=1, time="00:30:00",
                                                server="llamacpp")
        r.stage("1 generate (prepare -> array of 2 -> merge)", lines,
                f"{r.path('corpus_shards')}, {r.path('01_generate_qa')}")
    print("  contract:", check_generation(run), flush=True)

    # 2. concatenation (no launcher: one job)
    if first <= 2:
        cat_path = r.write("02_concatenate.yaml", CONCATENATE)
        py = '"${LONGCTX_PYTHON:-.venv/bin/python}"'
        lines = ["set -a; source slurm/cluster.env; set +a", f"mkdir -p {LOGS}",
                 f"sbatch --parsable --job-name=longctx-concatenate --cpus-per-task=2 --mem=8G --time=1:00:00 "
                 f"--output={LOGS}/%x-%j.out --wrap='{py} -m longctx.concatenate --params {cat_path}'"]
        r.stage("2 concatenate", lines, r.path("02_concatenate"))
    print("  contract:", check_concatenation(run, CONCATENATE["stages"]), flush=True)

    # 3. two training stages chained afterok; s2 meets its time limit's warning mid-stage
    if first <= 3:
        train_path = r.write("03_train.yaml", TRAIN)
        cfg = load_params(TrainConfig, root / train_path)
        lines = train_launch.sbatch_commands(cfg, train_path)
        warned = []

        def warn_mid_stage(ids: list[str]) -> None:
            """SLURM's time-limit warning for s2 once it has logged step WARN_AT_STEP: USR1 to the
            job's batch shell, as ``#SBATCH --signal=B:USR1@1800`` makes SLURM send it."""
            log = Path(log_of(ids[1]))
            log = log if log.is_absolute() else root / log
            if not warned and log.is_file() and f"] step {WARN_AT_STEP}/" in log.read_text(errors="replace"):
                run_checked(["scancel", "--batch", "--signal=USR1", ids[1]])
                warned.append(time.strftime("%H:%M:%S"))
                print(f"    [{warned[0]}] s2 logged step {WARN_AT_STEP}: sent it the time-limit warning "
                      f"(scancel --batch --signal=USR1 {ids[1]})", flush=True)

        ids = r.stage("3 train (s1 -> s2 afterok; s2 warned, checkpointed, requeued, resumed)", lines,
                      r.path("03_train"), during=warn_mid_stage)
        runs = sacct(ids)
        s2 = runs[ids[1]]
        print(f"  sacct: s1 {' -> '.join(runs[ids[0]].states)}, s2 {' -> '.join(s2.states)}", flush=True)
        assert warned, f"s2 finished before it logged step {WARN_AT_STEP}: the warning was never sent"
        assert s2.states.count("REQUEUED") >= 1, f"s2 was never requeued: sacct {s2.states}"
        s2_log = Path(log_of(ids[1])).read_text(errors="replace") if Path(log_of(ids[1])).is_file() else ""
        assert "stop requested" in s2_log and "resumed from" in s2_log, \
            f"s2's log ({log_of(ids[1])}) shows no checkpoint-and-stop followed by a resume"
        print("  resume:", check_resume_equals_uninterrupted(run, train_path), flush=True)
    print("  contract:", check_training(run, [stage["name"] for stage in TRAIN["stages"]]), flush=True)

    # 4. one evaluation job per checkpoint (CPU stand-in server for vLLM) -> 5. figures
    eval_path = r.write("04_evaluate.yaml", EVALUATE)
    ids = r.stage("4 evaluate (per checkpoint: array of 2 shards -> merge)", evaluation_lines(root, eval_path),
                  r.path("04_evaluate"))
    print("  ports:", check_own_ports([i for i, job in sacct(ids).items() if "_" in i]), flush=True)
    r.stage("5 figures", figures_lines(r.write("05_figures.yaml", FIGURES)), r.path("figures"))
    print("  contract:", check_evaluation(run, [f"rehearse-{stage['name']}" for stage in TRAIN["stages"]]), flush=True)

    print(f"\n== rehearsal: {time.monotonic() - r.started:.0f} s")
    every = [i for ids in r.jobs.values() for i in ids]
    for job in sacct(every).values():
        print(f"  {job.job_id:>8} {job.name:<28} {' -> '.join(job.states)}")
    for name, outputs, logs in r.report:
        print(f"  {name}\n      outputs: {outputs}\n      logs:    {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
