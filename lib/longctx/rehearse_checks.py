"""The contracts the rehearsal (``python -m longctx.rehearse``) checks between its stages: what
each stage wrote is what the next one reads (docs/CONTRACTS.md), and the training stage that was
stopped at its time limit, requeued and resumed equals an uninterrupted run of it, bitwise.

Each check takes the run's folder (``runs/rehearse`` under the run root) and what the rehearsal
asked for, raises ``AssertionError`` naming the file that breaks the contract, and returns a
one-line summary.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

__all__ = ["check_generation", "check_concatenation", "check_training", "final_weights",
           "check_resume_equals_uninterrupted", "check_evaluation"]


def check_generation(run: Path) -> str:
    """Two corpus shards of one document each, one qa.jsonl record per document with the stage-1
    keys and chunks covering the text, and each array task's manifest naming its shard."""
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


def check_concatenation(run: Path, stages: list[dict]) -> str:
    """Each stage's samples: as many as asked, no longer than the target, answers labelled."""
    import numpy as np

    from .concat.samples import open_samples

    out = []
    for spec in stages:
        samples = open_samples(run / "02_concatenate", spec["name"])
        assert len(samples) == spec["n_samples"], f"{spec['name']}: {len(samples)} samples"
        for i in range(len(samples)):
            item = samples[i]
            assert len(item["input_ids"]) == len(item["labels"]) <= spec["target_tokens"]
            answers = item["labels"] != -100
            assert answers.any() and np.array_equal(item["labels"][answers], item["input_ids"][answers])
        out.append(f"{spec['name']}: {len(samples)} samples")
    return ", ".join(out)


def check_training(run: Path, stages: list[str]) -> str:
    """Each stage: a complete final checkpoint, a transformers export, steps logged once each."""
    from .train import checkpoint
    from .train.log import read_log

    out = []
    for name in stages:
        folder = run / "03_train" / name
        rows = read_log(folder / "train_log.csv")
        assert checkpoint.is_complete(folder / "final"), f"{folder}/final is not a complete checkpoint"
        assert (folder / "hf" / "config.json").is_file(), f"{folder}/hf: no transformers export"
        steps = [r["step"] for r in rows]
        assert steps == list(range(1, len(steps) + 1)), f"{folder}/train_log.csv: steps {steps[:5]}..."
        out.append(f"{name}: {len(rows)} steps, loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
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


def check_resume_equals_uninterrupted(run: Path, params_path: str) -> str:
    """Train the requeued stage again, uninterrupted, without SLURM (torchrun here) from the same
    starting weights; the loss of every step and the final weights must be those of the run that
    was stopped, requeued and resumed."""
    import torch

    from .core.config import load_params, resolve_path
    from .train.config import TrainConfig
    from .train.launch import launch_local
    from .train.log import read_log

    ref_dir = run / "03_train_uninterrupted"
    shutil.rmtree(ref_dir, ignore_errors=True)
    (ref_dir / "s1").mkdir(parents=True)
    shutil.copytree(run / "03_train" / "s1" / "final", ref_dir / "s1" / "final")
    cfg = load_params(TrainConfig, resolve_path(params_path), {"output_dir": str(ref_dir), "export_hf": False})
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
            f"(reference: {ref_dir})")


def check_evaluation(run: Path, run_ids: list[str]) -> str:
    """A scored row per checkpoint in the folder's results table, and figures drawn."""
    from .eval.results import read_results

    table = read_results(run / "04_evaluate" / "results.csv")
    out = []
    for run_id in run_ids:
        rows = table[table["run_id"] == run_id]
        assert len(rows) >= 1 and rows["score"].notna().all(), \
            f"{run}/04_evaluate/results.csv: no scored row for checkpoint {run_id} ({len(rows)} rows)"
        out.append(f"{run_id}: {len(rows)} scored row(s)")
    figures = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert figures, f"{run}/figures: no figure written"
    return ", ".join(out) + f"; figures {', '.join(figures)}"
