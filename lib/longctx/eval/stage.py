"""Stage 4 entry point: evaluate a model on RULER, InfiniteBench, LongBench and MMLU.

    python -m longctx.evaluate --params params/demo/04_evaluate.yaml
    python -m longctx.evaluate --params params/paper/04_evaluate.yaml --set run_id=ours-1m
    python -m longctx.evaluate --params params/paper/04_evaluate.yaml --quick   # 50 rows per hub set

Every run appends one row per (benchmark, task, length) to ``{output_dir}/results.csv`` and
writes ``{output_dir}/{run_id}/predictions.jsonl`` and ``manifest.json``. ``notebooks/05_figures``
turns the results table into the paper's comparisons. ``--set key=value`` overrides a parameter
(YAML syntax for the value).
"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml

from ..core.config import load_params
from .params import EvalConfig
from .runner import open_backend, run_suite

__all__ = ["main", "evaluate", "QUICK_ROWS"]

QUICK_ROWS = 50  # rows per hub data set under --quick: minutes instead of hours, a rough estimate


def evaluate(cfg: EvalConfig):
    """Run the suite of ``cfg``; returns the new results rows (a DataFrame)."""
    with open_backend(cfg) as backend:
        return run_suite(cfg, backend)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="YAML file of EvalConfig parameters")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter")
    parser.add_argument("--quick", action="store_true", help=f"score a seeded random {QUICK_ROWS} rows of each "
                        "hub data set instead of all (hub_max_rows); the results mark them as subsamples")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    if args.quick:
        overrides.setdefault("hub_max_rows", QUICK_ROWS)
    cfg = load_params(EvalConfig, args.params, overrides or None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rows = evaluate(cfg)
    cols = ["benchmark", "task", "context_length", "n_scored", "score", "skipped"]
    print(rows[cols].to_string(index=False) if len(rows) else "no rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
