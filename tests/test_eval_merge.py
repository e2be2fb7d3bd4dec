"""Merging an evaluation's shards when a shard was run twice: a resubmitted array task that ran
beside its first copy leaves each of its groups twice in its shard's files (both copies append);
the merge keeps one row per (run, model, benchmark, task, length) and one prediction per sample,
the last written, and says so. A table appended twice (a merge rerun after a kill, a job
resubmitted whole) is read once."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
import yaml

from longctx.core.config import load_params
from longctx.eval.params import EvalConfig
from longctx.eval.results import append_rows, read_results, row
from longctx.eval.shards import merge_shards


def _group(length: int, score: float) -> dict:
    return row(run_id="r", model="ours", benchmark="ruler", task="niah_single_1", context_length=length,
               n_samples=1, n_scored=1, score=score, metric="string_match_all")


def _prediction(length: int, index: int | None, prediction: str) -> str:
    rec = {"run_id": "r", "benchmark": "ruler", "task": "niah_single_1", "context_length": length,
           "prompt_tokens": 200, "skipped": ""}
    if index is None:
        rec["skipped"] = "no room in the window"
    else:
        rec.update(index=index, prediction=prediction, score=1.0)
    return json.dumps(rec)


def _shard(out, i: int, groups: list[dict], predictions: list[str]) -> None:
    folder = out / "r" / "shards" / f"{i}-of-2"
    folder.mkdir(parents=True)
    for g in groups:
        append_rows(folder / "results.csv", [g])  # as the runner writes: one row per group as it ends
    (folder / "predictions.jsonl").write_text("".join(p + "\n" for p in predictions))
    (folder / "manifest.json").write_text(json.dumps({"shard": f"{i}/2", "finished": True}))


def test_a_shard_run_twice_is_merged_once(tmp_path, caplog):
    out = tmp_path / "eval"
    params = tmp_path / "04.yaml"
    params.write_text(yaml.safe_dump({"benchmarks": ["ruler"], "ruler_tasks": ["niah_single_1"],
                                      "ruler_lengths": [256, 512], "output_dir": str(out)}))
    cfg = load_params(EvalConfig, params)
    _shard(out, 0, [_group(256, 50.0)], [_prediction(256, 0, "7")])
    # shard 1 resubmitted while its first copy still ran: both copies appended every group
    _shard(out, 1, [_group(512, 0.0), _group(512, 100.0)],
           [_prediction(512, 0, "wrong"), _prediction(512, None, ""), _prediction(512, 0, "42"),
            _prediction(512, None, "")])
    with caplog.at_level(logging.WARNING, logger="longctx.evaluate"):
        merged = merge_shards(cfg, "r")
    assert list(zip(merged.context_length, merged.score)) == [("256", "50.0"), ("512", "100.0")]
    assert "1-of-2: 1 of its 2 rows written twice" in caplog.text
    table = pd.read_csv(out / "r" / "results.csv")
    assert list(zip(table.context_length, table.score)) == [(256, 50.0), (512, 100.0)]
    preds = [json.loads(line) for line in (out / "r" / "predictions.jsonl").read_text().splitlines()]
    assert [(p["context_length"], p.get("prediction")) for p in preds] == [(256, "7"), (512, "42"), (512, None)]
    # the merge job killed after appending to the folder's table and run again: the rows twice on
    # disk, once when read (figures, notebooks)
    append_rows(out / "results.csv", merged.to_dict("records"))
    assert len(pd.read_csv(out / "results.csv")) == 4
    shared = read_results(out / "results.csv")
    assert list(zip(shared.context_length, shared.score)) == [(256, 50.0), (512, 100.0)]
    with pytest.raises(FileExistsError, match="merged already"):
        merge_shards(cfg, "r")
