"""Stage 4 entry point: evaluate a model on RULER, InfiniteBench, LongBench and MMLU.

    python -m longctx.evaluate --params params/demo/04_evaluate.yaml
    python -m longctx.evaluate --params params/paper/04_evaluate.yaml --set run_id=ours-1m

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

from .config import load_params
from .eval.params import EvalConfig
from .eval.runner import open_backend, run_suite

__all__ = ["main", "evaluate"]


def evaluate(cfg: EvalConfig):
    """Run the suite of ``cfg``; returns the new results rows (a DataFrame)."""
    with open_backend(cfg) as backend:
        return run_suite(cfg, backend)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="YAML file of EvalConfig parameters")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    cfg = load_params(EvalConfig, args.params, overrides or None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rows = evaluate(cfg)
    cols = ["benchmark", "task", "context_length", "n_scored", "score", "skipped"]
    print(rows[cols].to_string(index=False) if len(rows) else "no rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
