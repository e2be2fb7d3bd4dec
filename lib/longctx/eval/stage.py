"""Stage 4 entry point: evaluate a model on RULER, InfiniteBench, LongBench and MMLU.

    python -m longctx.evaluate --params params/demo/04_evaluate.yaml
    python -m longctx.evaluate --params params/paper/04_evaluate.yaml --set run_id=ours-1m
    python -m longctx.evaluate --params params/paper/04_evaluate.yaml --quick   # 50 rows per hub set
    python -m longctx.evaluate --params P --set run_id=ours-1m --shard 3/8   # one server's share
    python -m longctx.evaluate --params P --merge ours-1m                    # join the 8 shards

Every run appends one row per (benchmark, task, length) to ``{output_dir}/results.csv`` and
writes ``{output_dir}/{run_id}/results.csv`` (this run's table), ``predictions.jsonl`` and
``manifest.json``; a shard writes under ``{run_id}/shards/I-of-N/`` until ``--merge``
(``slurm/evaluate.sbatch``, ``python -m longctx.eval.launch``). Needs no torch against a server. ``notebooks/05_figures``
turns the results table into the paper's comparisons. ``--set key=value`` overrides a parameter
(YAML syntax for the value).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace

from ..core.config import ParamsError, load_params, parse_overrides
from .params import EvalConfig
from .runner import open_backend, run_suite
from .shards import merge_shards
from .shards import parse_shard

__all__ = ["main", "evaluate", "QUICK_ROWS"]

QUICK_ROWS = 50  # rows per hub data set under --quick: minutes instead of hours, a rough estimate


def evaluate(cfg: EvalConfig, shard: str = ""):
    """Run the suite of ``cfg`` (shard ``i/n`` of it when given); returns the new results rows."""
    if not cfg.run_id:  # one name for the answer cache and the outputs
        cfg = replace(cfg, run_id=f"{cfg.model_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    with open_backend(cfg, shard) as backend:
        return run_suite(cfg, backend, shard=shard)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="YAML file of EvalConfig parameters")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter")
    parser.add_argument("--quick", action="store_true", help=f"score a seeded random {QUICK_ROWS} rows of each "
                        "hub data set instead of all (hub_max_rows); the results mark them as subsamples")
    parser.add_argument("--shard", default="", metavar="I/N", help="evaluate share I of N of the task x length "
                        "groups (one server of a split sweep); needs run_id")
    parser.add_argument("--merge", default="", metavar="RUN_ID", help="join the shards of RUN_ID into its results "
                        "table and the output folder's; sends nothing")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ParamsError as err:
        parser.error(str(err))
    if args.quick:
        overrides.setdefault("hub_max_rows", QUICK_ROWS)
    cfg = load_params(EvalConfig, args.params, overrides or None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.shard:
            parse_shard(args.shard)
            if not cfg.run_id:
                raise ValueError("--shard needs --set run_id=NAME, the same for every shard of the run")
        rows = merge_shards(cfg, args.merge) if args.merge else evaluate(cfg, args.shard)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cols = ["benchmark", "task", "context_length", "n_scored", "score", "skipped"]
    print(rows[cols].to_string(index=False) if len(rows) else "no rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
