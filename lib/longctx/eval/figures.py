"""The paper's comparisons, drawn from the results table and the table of reported numbers.

    python -m longctx.figures --params params/demo/05_figures.yaml

Inputs: one or more ``results.csv`` written by ``python -m longctx.evaluate`` (``source =
measured``) and ``lib/longctx/eval/data/paper_reported.csv`` (``source = reported``: numbers printed in
He et al., 2025, never recomputed). Reported values are always drawn hollow and dashed and
labelled "(reported)", in the colour of the measured model of the same name (the reported table
uses the params files' ``model_name``: ours-180k ... ours-1m, Llama-3.1-8B-Instruct, ...).
InfiniteBench bars say how the input was cut (column ``input_limit``): "cut to 128K" is the
official protocol, "own window" the model's whole window. Lengths are labelled with K = 1,024
tokens, so "1M" is 1,048,576 (the training's 1M); 1,000,000 is labelled "10^6". Outputs, PNG and
PDF in one style:

* ``ruler_by_length``      RULER score (mean over the tasks scored) against context length, per model
* ``infinitebench_tasks``  InfiniteBench score per task and model, plus the average
* ``longbench_tasks``      LongBench score per data set and model
* ``mmlu``                 MMLU accuracy per model

Tables behind each figure come from :func:`ruler_table`, :func:`task_table` and
:func:`mmlu_table`; for every (model, benchmark, task, length) the most recent run counts.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..core.config import load_params, param, resolve_path
from .results import read_reported, read_results

__all__ = ["FiguresConfig", "load_tables", "ruler_table", "task_table", "mmlu_table", "make_figures"]

KEYS = ["model", "benchmark", "task", "context_length"]


@dataclass
class FiguresConfig:
    results: list[str] = param(["runs/demo/04_evaluate/results.csv"], "results tables written by stage 4 (longctx.evaluate)")
    reported: str = param("", "table of the paper's reported numbers ('' = the packaged one)")
    include_reported: bool = param(True, "draw the paper's reported numbers next to ours")
    models: list[str] = param([], "models to show, in this order ([] = every model in the tables)")
    output_dir: str = param("runs/figures", "where the PNG and PDF files go (under the run root: LONGCTX_RUNS "
                            "moves them)")
    formats: list[str] = param(["png", "pdf"], "file formats written for every figure")


def load_tables(cfg: FiguresConfig) -> pd.DataFrame:
    """Measured rows (latest run per key) and, if asked, reported rows, in one frame. A results
    table that does not exist is an error naming it: a figure silently without a model is
    not the figure asked for."""
    missing = [str(resolve_path(p)) for p in cfg.results if not resolve_path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"results table(s) not found: {', '.join(missing)}: evaluate those checkpoints "
                                "first (python -m longctx.evaluate, or --merge RUN_ID for a sharded run), or "
                                "remove them from results")
    measured = read_results(*[resolve_path(p) for p in cfg.results])
    measured = measured[measured["source"].fillna("measured") == "measured"]
    measured = measured.drop_duplicates(KEYS, keep="last")
    frames = [measured]
    if cfg.include_reported:
        frames.append(read_reported(resolve_path(cfg.reported) if cfg.reported else None))
    df = pd.concat(frames, ignore_index=True)
    if cfg.models:
        df = df[df["model"].isin(cfg.models)]
    return df


def ruler_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, source, length): mean RULER score over the tasks that were scored."""
    rows = df[(df["benchmark"] == "ruler") & df["score"].notna()]
    measured = rows[rows["task"] != "average"].groupby(["model", "source", "context_length"], as_index=False).agg(
        score=("score", "mean"), n_tasks=("task", "nunique"))
    reported = rows[rows["task"] == "average"][["model", "source", "context_length", "score"]].assign(n_tasks=None)
    return pd.concat([measured, reported], ignore_index=True).sort_values(["source", "model", "context_length"])


def task_table(df: pd.DataFrame, benchmark: str) -> pd.DataFrame:
    """Model x task scores of one benchmark with an ``average`` column (over the tasks scored;
    reported averages are kept as printed)."""
    rows = df[(df["benchmark"] == benchmark) & df["score"].notna()].copy()
    if rows.empty:
        return pd.DataFrame()
    rows["label"] = rows["model"] + rows["source"].map(lambda s: " (reported)" if s == "reported" else "")
    if benchmark == "infinitebench":  # how the input was cut: measured rows say it in input_limit
        rows["label"] += [_cut_label(limit) if source != "reported" else ""
                          for limit, source in zip(rows["input_limit"], rows["source"])]
    measured = rows[rows["task"] != "average"]
    if benchmark == "infinitebench":
        from .infinitebench import IB_NAMES

        measured = measured.assign(task=measured["task"].map(lambda t: IB_NAMES.get(t, t)))
    # generated InfiniteBench tasks may be run at several lengths: the longest counts
    measured = measured.sort_values("context_length").drop_duplicates(["label", "task"], keep="last")
    table = measured.pivot(index="label", columns="task", values="score")
    if not table.empty:
        table["average"] = table.mean(axis=1)
    reported = rows[rows["task"] == "average"].set_index("label")["score"]
    for label, score in reported.items():
        table.loc[label, "average"] = score
    return table


def mmlu_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = df[(df["benchmark"] == "mmlu") & df["score"].notna()]
    return rows[["model", "source", "score", "n_scored"]].reset_index(drop=True)


# --------------------------------------------------------------------------- drawing


def _cut_label(limit: float) -> str:
    """InfiniteBench label suffix from ``input_limit``: how long the longest input could be."""
    if pd.isna(limit) or not limit:
        return " [own window]"
    return f" [cut to {_k(limit)}]"


def _model_colors(models) -> dict[str, str]:
    """One colour per model name, shared by its measured and reported entries."""
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(dict.fromkeys(models))
    return {m: cycle[i % len(cycle)] for i, m in enumerate(names)}


def _base_model(label: str) -> str:
    """The model name inside a bar label ("ours-1m [cut to 128K]", "ours-1m (reported)")."""
    return label.split(" [")[0].removesuffix(" (reported)")


def _style():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 120, "savefig.dpi": 150, "font.size": 10, "axes.grid": True,
                         "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
                         "legend.frameon": False})
    return plt


def _save(fig, out: Path, name: str, formats: list[str]) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{name}.{fmt}"
        fig.savefig(path, bbox_inches="tight")
        paths.append(str(path))
    return paths


def plot_ruler(table: pd.DataFrame, out: Path, formats: list[str]) -> list[str]:
    plt = _style()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    colors = _model_colors(table["model"])
    for (model, source), rows in table.groupby(["model", "source"], sort=False):
        rows = rows.sort_values("context_length")
        color = colors[model]
        if source == "reported":
            ax.plot(rows["context_length"], rows["score"], ls="none", marker="D", mfc="none", mec=color,
                    ms=8, label=f"{model} (reported)")
        else:
            ax.plot(rows["context_length"], rows["score"], marker="o", color=color, label=model)
    ax.set_xscale("log", base=2)
    ticks = sorted(table["context_length"].unique())
    ax.set_xticks(ticks, [_k(t) for t in ticks])
    ax.set(xlabel="context length (tokens; K = 1,024, 1M = 1,048,576)", ylabel="RULER score (mean over tasks)",
           ylim=(0, 100),
           title="RULER: score against context length")
    ax.legend(fontsize=8)
    paths = _save(fig, out, "ruler_by_length", formats)
    plt.close(fig)
    return paths


def plot_tasks(table: pd.DataFrame, title: str, name: str, out: Path, formats: list[str]) -> list[str]:
    plt = _style()
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6.4, 0.7 * len(table.columns) * max(len(table), 1) / 2 + 3), 4))
    width = 0.8 / max(len(table), 1)
    x = np.arange(len(table.columns))
    colors = _model_colors(_base_model(label) for label in table.index)
    for i, (label, scores) in enumerate(table.iterrows()):
        reported = label.endswith("(reported)")  # hollow, hatched, in the model's colour
        color = colors[_base_model(label)]
        ax.bar(x + i * width, scores.fillna(0).values, width, label=label, hatch="//" if reported else None,
               fill=not reported, color=color, edgecolor=color)
    ax.set_xticks(x + width * (len(table) - 1) / 2, table.columns, rotation=30, ha="right")
    ax.set(ylabel="score", ylim=(0, 100), title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    paths = _save(fig, out, name, formats)
    plt.close(fig)
    return paths


def plot_mmlu(table: pd.DataFrame, out: Path, formats: list[str]) -> list[str]:
    plt = _style()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    labels = table["model"] + table["source"].map(lambda s: " (reported)" if s == "reported" else "")
    reported = (table["source"] == "reported").values
    for label, score, rep in zip(labels, table["score"], reported):  # reported: hollow and hatched
        ax.barh(label, score, color="C1" if rep else "C0", fill=not rep, hatch="//" if rep else None,
                edgecolor="C1" if rep else "C0")
    ax.set(xlabel="accuracy (5-shot, micro-averaged)", xlim=(0, 100), title="MMLU")
    paths = _save(fig, out, "mmlu", formats)
    plt.close(fig)
    return paths


def _k(n: float) -> str:
    """Tick label of a length, K = 1,024: 4096 -> 4K, 1048576 -> 1M, 358400 -> 350K; powers of ten
    say so (1000000 -> 10^6, 350000 -> 350x10^3), so the training's 1M and 10^6 never share a label."""
    n = int(n)
    if n == 1_000_000:
        return "10^6"
    for unit, suffix in ((1048576, "M"), (1024, "K"), (1000, "x10^3")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def make_figures(cfg: FiguresConfig) -> dict:
    """Draw every figure there is data for; returns the tables and the written files."""
    df = load_tables(cfg)
    out = resolve_path(cfg.output_dir)
    ruler = ruler_table(df)
    ib = task_table(df, "infinitebench")
    lb = task_table(df, "longbench")
    mmlu = mmlu_table(df)
    files: dict[str, list[str]] = {}
    if not ruler.empty:
        files["ruler_by_length"] = plot_ruler(ruler, out, cfg.formats)
    if not ib.empty:
        files["infinitebench_tasks"] = plot_tasks(ib, "InfiniteBench", "infinitebench_tasks", out, cfg.formats)
    if not lb.empty:
        files["longbench_tasks"] = plot_tasks(lb, "LongBench v1", "longbench_tasks", out, cfg.formats)
    if not mmlu.empty:
        files["mmlu"] = plot_mmlu(mmlu, out, cfg.formats)
    return {"ruler": ruler, "infinitebench": ib, "longbench": lb, "mmlu": mmlu, "files": files, "table": df}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="YAML file of FiguresConfig parameters")
    cfg = load_params(FiguresConfig, parser.parse_args(argv).params)
    try:
        drawn = make_figures(cfg)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = drawn["table"]
    if cfg.results and not ((table["source"] == "measured") & table["score"].notna()).any():
        which = f" for models {cfg.models}" if cfg.models else ""
        print(f"error: no scored row in {', '.join(cfg.results)}{which}: nothing measured to draw", file=sys.stderr)
        return 1
    for name, paths in drawn["files"].items():
        print(name, *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
