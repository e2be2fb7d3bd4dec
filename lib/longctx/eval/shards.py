"""The evaluation's work list (benchmark x task x length), its split over servers, and its cost.

One run evaluates every (benchmark, task, length) group of its config; a sweep at the paper's
scale (13 RULER tasks x 9 lengths x 50 samples, up to 1M tokens each) is days on one server, so
``slurm/evaluate.sbatch`` runs shard ``i/n`` of the list on each of ``n`` servers. Groups are
assigned longest-processing-time first (the costliest group to the least loaded shard), by
:func:`group_weight`: prompt tokens weighted by ``1 + L / ATTENTION_BALANCE`` for ``L``-token
prompts, since attention makes a token of a long prompt dearer (for Llama-3.1-8B, attention
FLOPs equal the linear layers' at ~32K tokens), so that the 1M groups do not all land on one
server; the assignment is a function of the config alone, the same in every task and in the
launcher's projection (:mod:`longctx.eval.launch`).

Hub data sets have no configured length: their cost uses :data:`HUB_ESTIMATES` (rows, mean
prompt tokens), rough figures for the projection and the balance only.

:func:`merge_shards` joins the shards of a run once every one has finished, one row per
(run, model, benchmark, task, length) and one prediction per sample: a shard whose files hold a
group twice (a resubmitted task that ran beside its first copy) contributes it once.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from typing import Any

from ..core.config import resolve_path
from .infinitebench import IB_SYNTHETIC
from .results import ROW_KEY, append_rows

__all__ = ["WorkItem", "work_list", "group_cost", "group_weight", "assign", "parse_shard", "merge_shards",
           "HUB_ESTIMATES"]

log = logging.getLogger("longctx.evaluate")

ATTENTION_BALANCE = 32768  # prompt length at which attention costs as much as the rest (8B: 2*8e9 = 4*32*4096*L/2)

# (rows, mean prompt tokens before truncation to the window): InfiniteBench's hub tasks are
# ~100-400 rows of 100K-200K tokens; LongBench v1's data sets 200 rows of ~8K; MMLU 14,042 5-shot
# prompts of ~600 tokens. Estimates for planning, never used for scoring.
HUB_ESTIMATES: dict[str, tuple[int, int]] = {"infinitebench": (250, 180_000), "longbench": (200, 8_000),
                                             "mmlu": (14_042, 600), "babilong": (100, 0)}


@dataclass(frozen=True)
class WorkItem:
    benchmark: str
    task: str
    length: int          # 0 = the data set's own lengths (hub sets, MMLU)

    @property
    def label(self) -> str:
        return f"{self.benchmark}/{self.task}@{self.length}" if self.length else f"{self.benchmark}/{self.task}"


def work_list(cfg: Any) -> list[WorkItem]:
    """Every group the config evaluates, in the order :func:`~longctx.eval.runner.run_suite` runs them."""
    items: list[WorkItem] = []
    if "ruler" in cfg.benchmarks:
        items += [WorkItem("ruler", t, L) for t in cfg.ruler_tasks for L in cfg.ruler_lengths]
    if "infinitebench" in cfg.benchmarks:
        for t in cfg.infinitebench_tasks:
            items += ([WorkItem("infinitebench", t, L) for L in cfg.infinitebench_lengths] if t in IB_SYNTHETIC
                      else [WorkItem("infinitebench", t, 0)])
    if "longbench" in cfg.benchmarks:
        items += [WorkItem("longbench", t, 0) for t in cfg.longbench_tasks]
    if "mmlu" in cfg.benchmarks:
        items.append(WorkItem("mmlu", "mmlu", 0))
    if "babilong" in cfg.benchmarks:
        from .babilong import length_tokens

        items += [WorkItem("babilong", t, length_tokens(L)) for t in cfg.babilong_tasks for L in cfg.babilong_lengths]
    return items


def group_cost(item: WorkItem, cfg: Any, window: int = 0) -> tuple[int, int]:
    """(requests, prompt tokens) one group sends, projected; ``window`` caps a prompt (0 = no cap)."""
    if item.benchmark == "babilong":  # hub rows at a named length ("0k" = the bare facts, ~200 tokens)
        n = min(100, cfg.hub_max_rows) if cfg.hub_max_rows else 100
        tokens = max(item.length, 200)
    elif item.length:
        n, tokens = cfg.n_samples, item.length
    else:
        rows, tokens = HUB_ESTIMATES[item.benchmark]
        n = min(rows, cfg.hub_max_rows) if cfg.hub_max_rows and item.benchmark != "mmlu" else rows
        if item.benchmark == "mmlu" and cfg.mmlu_max_questions:
            n = min(n, cfg.mmlu_max_questions)
    if window:
        tokens = min(tokens, window)
    return n, n * tokens


def group_weight(item: WorkItem, cfg: Any, window: int = 0) -> float:
    """The balance weight of one group: prompt tokens x (1 + mean prompt length / ATTENTION_BALANCE);
    0 for a length beyond the server's ``window`` (the runner skips it without a request)."""
    if window and item.length > window:
        return 0.0
    n, tokens = group_cost(item, cfg, window)
    return tokens * (1 + (tokens / n if n else 0) / ATTENTION_BALANCE)


def assign(items: list[WorkItem], n_shards: int, cfg: Any, window: int = 0) -> list[int]:
    """The shard of each item: costliest first onto the least loaded shard (ties: lowest index),
    for a server of ``window`` tokens (the runner's is the one the server reports, the launcher's
    the ``MAX_MODEL_LEN`` it gives the server: the same number)."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    load = [0.0] * n_shards
    shard_of = [0] * len(items)
    weight = [group_weight(item, cfg, window) for item in items]
    order = sorted(range(len(items)), key=lambda k: (-weight[k], k))
    for k in order:
        target = min(range(n_shards), key=lambda s: (load[s], s))
        shard_of[k] = target
        load[target] += weight[k]
    return shard_of


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/8"`` -> ``(3, 8)``, with a clear error for anything else."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be I/N (e.g. 3/8), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return index, count


def _prediction_key(line: str) -> tuple:
    """One sample of one group: its index; a record without one (not sent: no room in the window)
    is its own key, so identical copies collapse and distinct ones stay."""
    rec = json.loads(line)
    if "index" not in rec:
        return ("line", line)
    return (rec.get("run_id"), rec.get("benchmark"), rec.get("task"), rec.get("context_length"), rec["index"])


def merge_shards(cfg, run_id: str):
    """Join the shards of ``run_id`` into ``{output_dir}/{run_id}/results.csv`` and
    ``predictions.jsonl``, and append their rows to ``{output_dir}/results.csv``; returns the rows.

    Every shard ``0..n-1`` must have finished (its manifest says so): a missing, failed or killed
    shard is an error naming it, so a partial sweep is never merged as complete; merging twice
    is refused. Rows are keyed by :data:`~longctx.eval.results.ROW_KEY` and predictions by sample,
    the last written kept: a group written twice is merged once, with a warning naming the shard."""
    import pandas as pd

    out_dir = resolve_path(cfg.output_dir)
    shards_root = out_dir / run_id / "shards"
    found = sorted(shards_root.glob("*-of-*")) if shards_root.is_dir() else []
    if not found:
        raise FileNotFoundError(f"{shards_root}: no shard of run {run_id!r} to merge")
    counts = {int(p.name.split("-of-")[1]) for p in found}
    if len(counts) != 1:
        raise ValueError(f"{shards_root}: shards of different splits {sorted(p.name for p in found)}")
    count = counts.pop()
    unfinished = []
    for i in range(count):
        try:
            done = json.loads((shards_root / f"{i}-of-{count}" / "manifest.json").read_text()).get("finished")
        except (OSError, ValueError):
            done = False
        if not done:
            unfinished.append(f"{i}-of-{count}")
    if unfinished:
        raise FileNotFoundError(f"run {run_id!r}: shard(s) {unfinished} under {shards_root} did not finish "
                                "(failed, killed or not run yet); rerun them (answers already given are "
                                "cached) before merging")
    merged = out_dir / run_id / "results.csv"
    if merged.is_file():
        raise FileExistsError(f"{merged} exists: run {run_id!r} was merged already")
    rows: dict[tuple, dict[str, Any]] = {}
    predictions: dict[tuple, str] = {}
    for i in range(count):
        shard = shards_root / f"{i}-of-{count}"
        seen = len(rows)
        written = 0
        if (shard / "results.csv").is_file():
            with (shard / "results.csv").open(newline="", encoding="utf-8") as handle:
                for r in csv.DictReader(handle):
                    rows.pop(key := tuple(str(r.get(c, "")) for c in ROW_KEY), None)
                    rows[key] = r           # the last copy, at the place of the last
                    written += 1
        if written > len(rows) - seen:
            log.warning("%s: %d of its %d rows written twice (a resubmitted task beside the first?): "
                        "merged once, the last copy kept", shard, written - (len(rows) - seen), written)
        if (shard / "predictions.jsonl").is_file():
            for line in (shard / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
                if line.strip():
                    predictions.pop(key := _prediction_key(line), None)
                    predictions[key] = line
    order = {item.label: k for k, item in enumerate(work_list(cfg))}
    records = sorted(rows.values(), key=lambda r: order.get(
        WorkItem(r["benchmark"], r["task"], int(r["context_length"] or 0)).label, len(order)))
    with (out_dir / run_id / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in predictions.values())
    append_rows(out_dir / "results.csv", records)
    append_rows(merged, records)
    return pd.DataFrame(records)
