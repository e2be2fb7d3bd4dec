"""Stage 1 on SLURM with self-hosted generators: the sbatch chain, rendered, never submitted.

    python -m longctx.generate.launch --params params/paper/01_generate_qa.yaml --shards 64 \\
        --model /models/Qwen2-72B-Instruct --tp 8 --servers 8

prints shell lines, run from the project root, that queue three jobs chained with
``--dependency=afterok``:

1. one CPU job: ``python -m longctx.generate.corpus_shards`` reads the corpus once into shard files;
2. the array ``slurm/generate_vllm.sbatch``: task ``i`` serves the generator with vLLM on its own
   node and runs shard ``i/n`` against it; ``--array=0-(n-1)%servers`` keeps ``servers`` nodes busy;
3. one CPU job: ``python -m longctx.generate --merge`` joins the shards.

``--server llamacpp`` serves the project's embedded llama.cpp model (SmolLM2-135M on CPU) in each
task instead of vLLM, the stand-in ``./dev rehearse`` submits on a cluster without GPUs.

Cluster settings (partition, account, Python) come from the ignored ``slurm/cluster.env``, as for
stage 3 (:func:`longctx.train.launch.sbatch_commands`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..core.config import ParamsError, load_params, project_root, resolve_path
from .params import GenerateParams

__all__ = ["sbatch_commands", "main"]

_PY = '"${LONGCTX_PYTHON:-.venv/bin/python}"'


def _shown(path: str | Path) -> str:
    """``path`` relative to the project root when inside it (the jobs run from there)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(project_root())) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


def sbatch_commands(params: GenerateParams, params_path: str | Path, *, shards: int, model: str, tp: int = 8,
                    port: int = 8000, servers: int | None = None, time: str = "48:00:00",
                    generate_args: str = "", server: str = "vllm") -> list[str]:
    """The lines that prepare the corpus, run ``shards`` generation tasks on ``servers`` GPU nodes
    at once (``tp`` GPUs each, one vLLM server per node), and merge. ``server="llamacpp"``: each
    task serves the embedded llama.cpp model instead (``model``: a GGUF file, or empty for SmolLM2)."""
    if shards < 1 or tp < 1 or (servers is not None and servers < 1):
        raise ValueError(f"shards, tp and servers must be >= 1 (got {shards}, {tp}, {servers})")
    if server not in ("vllm", "llamacpp"):
        raise ValueError(f"server must be vllm or llamacpp, not {server!r}")
    if "," in model + generate_args:
        raise ValueError("sbatch --export splits on commas: model and generate_args cannot contain one")
    servers = servers or params.projection_servers
    path = shlex.quote(_shown(params_path))
    exports = (f"ALL,SHARDS={shards}" + (",SERVER=llamacpp" if server == "llamacpp" else "")
               + (f",MODEL={model}" if model else "") + f",TP={tp},PORT={port}"
               + (f",GENERATE_ARGS={generate_args}" if generate_args else ""))
    lines = ["mkdir -p runs/slurm",
             "set -a; source slurm/cluster.env; set +a   # partition, account, LONGCTX_PYTHON (cluster.env.example)"]
    dependency = ""
    if params.corpus_shards_dir:
        prepare = f"{_PY} -m longctx.generate.corpus_shards --params {path} --shards {shards}"
        lines.append(f"prep=$(sbatch --parsable --job-name=longctx-prepare-corpus --cpus-per-task=4 --mem=16G "
                     f"--time=24:00:00 --output=runs/slurm/%x-%j.out --wrap={shlex.quote(prepare)})")
        dependency = " --dependency=afterok:$prep"
    lines.append(f"gen=$(sbatch --parsable{dependency} --array=0-{shards - 1}%{servers} --gpus-per-node={tp} "
                 f"--time={time} --export={shlex.quote(exports)} slurm/generate_vllm.sbatch {path})")
    merge = f"{_PY} -m longctx.generate --params {path} --merge"
    lines.append(f"sbatch --dependency=afterok:$gen --job-name=longctx-merge --cpus-per-task=2 --mem=8G "
                 f"--time=2:00:00 --output=runs/slurm/%x-%j.out --wrap={shlex.quote(merge)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.generate.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True, help="YAML file of GenerateParams (stage 1)")
    parser.add_argument("--shards", type=int, default=64, help="array tasks (and shard files)")
    parser.add_argument("--model", default="", help="generator weights, a path or hub id (default: llm_model)")
    parser.add_argument("--tp", type=int, default=8, help="tensor-parallel degree = GPUs per node (4 or 8 for 72B)")
    parser.add_argument("--port", type=int, default=8000, help="port of each node's server on 127.0.0.1")
    parser.add_argument("--servers", type=int, default=0, help="nodes at once (default: projection_servers)")
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
        lines = sbatch_commands(params, resolve_path(args.params), shards=args.shards,
                                model=args.model or ("" if args.server == "llamacpp" else params.llm_model), tp=args.tp, port=args.port,
                                servers=args.servers or None, time=args.time, generate_args=args.generate_args,
                                server=args.server)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
