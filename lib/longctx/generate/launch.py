"""Stage 1 on SLURM: the sbatch chain, rendered, never submitted.

    python -m longctx.generate.launch --params params/paper/01_generate_qa.yaml --shards 64 \\
        --model /models/Qwen2-72B-Instruct --tp 8 --servers 8          # self-hosted: vLLM per node
    python -m longctx.generate.launch --params params/paper/01_generate_qa.yaml --shards 64 \\
        --api --at-once 8                                               # a hosted API, CPU-only tasks

prints shell lines, run from the project root, that queue three jobs chained with
``--dependency=afterok``:

1. one CPU job: ``python -m longctx.generate.corpus_shards`` reads the corpus once into shard files;
2. the array: task ``i`` runs shard ``i/n`` (``SHARDS=n`` exported: a task resubmitted alone
   keeps its shard); ``--array=0-(n-1)%N`` runs ``N`` tasks at once. With ``--api`` every task
   sends to the params' endpoint (``slurm/generate.sbatch``), so the params' ``max_concurrency``,
   ``requests_per_minute`` and ``tokens_per_minute`` are the run's and each task takes ``1/N``
   (``TASKS_AT_ONCE=N`` -> ``limits_shared_by``); the lines say what each task gets. Otherwise
   each task serves the generator with vLLM on its own node (``slurm/generate_vllm.sbatch``) and
   the limits are per server;
3. one CPU job: ``python -m longctx.generate --merge`` joins the shards.

``--server llamacpp`` serves the project's embedded llama.cpp model (SmolLM2-135M on CPU) in each
task instead of vLLM, the stand-in ``./dev rehearse`` submits on a cluster without GPUs.

Cluster settings (partition, account, Python, ``LONGCTX_RUNS``, memory and CPUs of the tasks)
come from the ignored ``slurm/cluster.env``, as for stage 3 (:func:`longctx.train.launch.sbatch_commands`);
``python -m longctx.generate.status`` follows the array while it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from ..core.config import ParamsError, load_params, project_root, resolve_path
from .params import GenerateParams
from .stage import describe_limits, task_limits

__all__ = ["sbatch_commands", "main"]

_PY = '"${LONGCTX_PYTHON:-.venv/bin/python}"'
_LOGS = '"${LONGCTX_RUNS:-runs}/slurm"'  # the jobs' logs: under the run root (LONGCTX_RUNS, e.g. scratch)


def _shown(path: str | Path) -> str:
    """``path`` relative to the project root when inside it (the jobs run from there)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(project_root())) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


def sbatch_commands(params: GenerateParams, params_path: str | Path, *, shards: int, model: str = "", tp: int = 8,
                    port: int = 0, servers: int | None = None, time: str = "48:00:00",
                    generate_args: str = "", api: bool = False,
                    server: str = "vllm") -> list[str]:
    """The lines that prepare the corpus, run ``shards`` generation tasks, ``servers`` at once,
    and merge. ``api``: CPU-only tasks against the params' endpoint, sharing its limits;
    otherwise one vLLM server of ``model`` on ``tp`` GPUs per task; ``server="llamacpp"``: each
    task serves the embedded llama.cpp model instead (``model``: a GGUF file, or empty for SmolLM2)."""
    servers = servers or params.projection_servers
    if shards < 1 or tp < 1 or servers < 1:
        raise ValueError(f"shards, tp and servers must be >= 1 (got {shards}, {tp}, {servers})")
    if server not in ("vllm", "llamacpp"):
        raise ValueError(f"server must be vllm or llamacpp, not {server!r}")
    if "," in model + generate_args:
        raise ValueError("sbatch --export splits on commas: model and generate_args cannot contain one")
    if api and not params.llm_base_url:
        raise ValueError("--api sends to the params' llm_base_url, which is empty (the embedded server)")
    if api and servers > params.max_concurrency:
        raise ValueError(f"{servers} tasks at once cannot share max_concurrency {params.max_concurrency} "
                         "(each needs at least one request in flight): raise it or run fewer at once")
    path = shlex.quote(_shown(params_path))
    lines = ["set -a; source slurm/cluster.env; set +a   # partition, account, LONGCTX_PYTHON, LONGCTX_RUNS "
             "(cluster.env.example)",
             f"mkdir -p {_LOGS}   # SLURM does not create the folder of --output: without it no task logs"]
    if api:
        shared = dataclasses.replace(params, limits_shared_by=servers)
        lines.append(f"# {servers} tasks at once share the run's limits; "
                     + describe_limits(shared, task_limits(shared, params.max_concurrency)).replace(
                         f"limits of this task ({servers} tasks at once share the run's): ", "each task gets "))
    else:
        lines.append(f"# each task serves its own generator: max_concurrency {params.max_concurrency} is per server, "
                     f"{servers * params.max_concurrency} requests in flight on {servers} servers at once"
                     + (f"; the whole run stops at ${params.max_cost_usd:g} (max_cost_usd)" if params.max_cost_usd else ""))
    dependency = ""
    if params.corpus_shards_dir:
        prepare = f"{_PY} -m longctx.generate.corpus_shards --params {path} --shards {shards}"
        lines.append(f"prep=$(sbatch --parsable --job-name=longctx-prepare-corpus --cpus-per-task=4 --mem=16G "
                     f"--time=24:00:00 --output={_LOGS}/%x-%j.out --wrap={shlex.quote(prepare)})")
        dependency = " --dependency=afterok:$prep"
    extra = f",GENERATE_ARGS={generate_args}" if generate_args else ""
    array = f"--array=0-{shards - 1}%{servers}"
    if api:
        # SHARDS explicitly: a task resubmitted alone (--array=17) cannot infer it from the array
        exports = f"ALL,SHARDS={shards},TASKS_AT_ONCE={servers}" + extra
        resources = '--cpus-per-task="${GENERATE_CPUS:-4}" --mem="${GENERATE_MEM:-16G}"'
        script = "slurm/generate.sbatch"
    else:
        model = model if server == "llamacpp" else (model or params.llm_model)  # llamacpp: "" = SmolLM2
        exports = (f"ALL,SHARDS={shards}" + (",SERVER=llamacpp" if server == "llamacpp" else "")
                   + (f",MODEL={model}" if model else "") + f",TP={tp}" + (f",PORT={port}" if port else "") + extra)
        resources = (f'--gpus-per-node={tp} --cpus-per-task="${{GENERATE_CPUS:-16}}" --mem="${{GENERATE_MEM:-0}}"'
                     ' ${GENERATE_EXCLUSIVE:+--exclusive}')
        script = "slurm/generate_vllm.sbatch"
    lines.append(f"gen=$(sbatch --parsable{dependency} {array} {resources} --time={time} "
                 f"--output={_LOGS}/%x-%A_%a.out --export={shlex.quote(exports)} {script} {path})")
    merge = f"{_PY} -m longctx.generate --params {path} --merge"
    lines.append(f"sbatch --dependency=afterok:$gen --job-name=longctx-merge --cpus-per-task=2 --mem=8G "
                 f"--time=2:00:00 --output={_LOGS}/%x-%j.out --wrap={shlex.quote(merge)}")
    lines.append(f"# while it runs: {_PY} -m longctx.generate.status --params {path}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.generate.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True, help="YAML file of GenerateParams (stage 1)")
    parser.add_argument("--shards", type=int, default=64, help="array tasks (and shard files)")
    parser.add_argument("--api", action="store_true",
                        help="CPU-only tasks against the params' llm_base_url (slurm/generate.sbatch), sharing "
                             "its limits; default: a vLLM server per task (slurm/generate_vllm.sbatch)")
    parser.add_argument("--model", default="", help="generator weights, a path or hub id (default: llm_model)")
    parser.add_argument("--tp", type=int, default=8, help="tensor-parallel degree = GPUs per node (4 or 8 for 72B)")
    parser.add_argument("--port", type=int, default=0, help="port of each node's server on 127.0.0.1 (default: a "
                        "free one, picked when the task starts, so tasks sharing a node never collide)")
    parser.add_argument("--servers", "--at-once", type=int, default=0, dest="servers",
                        help="tasks (nodes, servers) at once, the array's %%N (default: projection_servers)")
    parser.add_argument("--time", default="48:00:00", help="time limit of one array task")
    parser.add_argument("--generate-args", default="", help="more longctx.generate flags for every task")
    parser.add_argument("--server", choices=["vllm", "llamacpp"], default="vllm",
                        help="what each task serves: vLLM on its GPUs, or the embedded llama.cpp model on CPU "
                             "(a rehearsal without GPUs)")
    args = parser.parse_args(argv)
    try:
        params = load_params(GenerateParams, args.params)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        lines = sbatch_commands(params, resolve_path(args.params), shards=args.shards, model=args.model,
                                tp=args.tp, port=args.port, servers=args.servers or None, time=args.time,
                                generate_args=args.generate_args, api=args.api,
                                server=args.server)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
