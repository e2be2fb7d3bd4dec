"""Stage 1's outputs from finished document files: ``qa.jsonl``, ``rejected.jsonl`` and the
manifest's counts (rejections by gate and category, the walk's coverage, long-document warnings,
totals), for one shard (:func:`assemble`) or for the shards of a run joined (:func:`merge`).

Kept apart from :mod:`longctx.generate.stage`, which runs the documents: this module only reads
the per-document files a run wrote (``work/docs/*.json``), so a merge job needs no server.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.config import resolve_path
from .params import GenerateParams
from .quality import gate_of
from .windows import DEFAULT_WINDOW_TOKENS

__all__ = ["assemble", "merge", "long_document_warnings", "totals", "write_atomic"]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def assemble(out: Path, docs_dirs: list[Path]) -> dict[str, Any]:
    """Write qa.jsonl and rejected.jsonl from finished document files; return counts."""
    files = sorted((f for d in docs_dirs for f in d.glob("*.json")), key=lambda f: int(f.stem))
    counts: Counter = Counter()
    by_level: Counter = Counter()
    by_type: Counter = Counter()
    reasons: Counter = Counter()
    by_gate: Counter = Counter()
    by_category: dict[str, Counter] = {}  # question level / diverse type / summary kind -> gate -> rejects
    failed_docs, per_doc = [], []
    walks: dict[str, list[dict]] = {"planned": [], "kept": []}  # per document (files written since issue 19)
    book_tokens = 0
    tmp_qa, tmp_rej = out / ".qa.jsonl.tmp", out / ".rejected.jsonl.tmp"
    with open(tmp_qa, "w", encoding="utf-8") as qa_out, open(tmp_rej, "w", encoding="utf-8") as rej_out:
        for path in files:
            book = json.loads(path.read_text(encoding="utf-8"))
            if "windows" in book:  # counted apart so that the dry run's projection scales by books
                counts["documents_windowed"] += 1
                counts["windows"] += len(book["windows"])
            for entry in book.get("windows") or [book]:  # a long book's windows are documents of their own
                per_doc.append({"id": entry["id"], "status": entry["status"], **entry.get("accounting", {})})
                if entry["status"] != "ok":
                    failed_docs.append({"id": entry["id"], "source": entry["source"], "reason": entry["reason"]})
                    continue
                record = entry["record"]
                qa_out.write(json.dumps(record, ensure_ascii=False) + "\n")
                for reject in entry["rejects"]:
                    rej_out.write(json.dumps(reject, ensure_ascii=False) + "\n")
                    reasons[reject["reason"]] += 1
                    gate = reject.get("gate") or gate_of(reject["reason"])  # files written before gates were named
                    by_gate[gate] += 1
                    by_category.setdefault(reject.get("category") or reject["kind"], Counter())[gate] += 1
                counts["documents_written"] += 1
                counts["failed_questions"] += len(entry["failed_items"])
                for kind in ("hierarchical", "diverse"):  # requested QA still missing when the budget ran out
                    counts[f"shortfall_{kind}"] += entry.get("shortfall", {}).get(kind, 0)
                    counts[f"qa_generations_{kind}"] += entry.get("qa_generations", {}).get(kind, 0)
                counts["summary_fallbacks"] += len(record["summaries"].get("fallbacks", []))
                for key in walks:
                    if key in entry.get("walk", {}):
                        walks[key].append(entry["walk"][key])
                book_tokens += record["n_tokens"]
                counts["documents_longer_than_paper_slot"] += record["n_tokens"] > DEFAULT_WINDOW_TOKENS
                by_level.update(q["level"] for q in record["hierarchical_qa"])
                by_type.update(q["type"] for q in record["diverse_qa"])
    tmp_qa.replace(out / "qa.jsonl")
    tmp_rej.replace(out / "rejected.jsonl")
    return {"counts": {**counts, "documents_failed": len(failed_docs),
                       "hierarchical_qa": sum(by_level.values()), "diverse_qa": sum(by_type.values()),
                       "hierarchical_by_level": dict(by_level), "diverse_by_type": dict(by_type),
                       "rejected_total": sum(reasons.values()), "rejected_by_reason": dict(reasons),
                       "rejected_by_gate": dict(by_gate),
                       "rejected_by_category": {c: dict(g) for c, g in sorted(by_category.items())}},
            "book_tokens": book_tokens, "failed_documents": failed_docs, "per_document": per_doc,
            "walk": _walk_means(walks)}


def _walk_means(walks: dict[str, list[dict]]) -> dict[str, Any]:
    """The hierarchical walk over the documents, planned and kept: mean shares of sections and
    chunks with a question, mean chunk-level follow-ups, and the mean and largest ``largest_gap``
    (pipeline.walk_summary)."""
    out: dict[str, Any] = {"documents": len(walks["planned"])}
    for key, rows in walks.items():
        if rows:
            mean = {k: round(sum(r[k] for r in rows) / len(rows), 4)
                    for k in ("sections", "chunks", "largest_gap", "follow_ups")}
            out[key] = {**mean, "largest_gap_max": round(max(r["largest_gap"] for r in rows), 4)}
    return out


def long_document_warnings(counts: dict[str, Any], params: GenerateParams) -> list[str]:
    """A warning when records are longer than the paper's stage-2 slots allow whole (windows off or
    wider than the default): stage 2 will cut them and lose their global questions."""
    n = counts.get("documents_longer_than_paper_slot", 0)
    if not n:
        return []
    return [f"{n} of {counts.get('documents_written', 0)} documents are longer than {DEFAULT_WINDOW_TOKENS:,} "
            f"tokens (max_window_tokens is {params.max_window_tokens:,}): the paper's 350K / 650K / 1M stages "
            "can only place them cut, losing their global questions (issue 19: 10-31 % kept on a 250K-median "
            f"corpus); fix: rerun with max_window_tokens={DEFAULT_WINDOW_TOKENS} (the default), which splits "
            "them into windows stage 2 places whole"]


def totals(per_doc: list[dict], book_tokens: int) -> dict[str, Any]:
    keys = ("calls", "requests", "cache_hits", "retries", "failures", "prompt_tokens", "completion_tokens", "cost_usd")
    total = {k: sum(d.get(k, 0) or 0 for d in per_doc) for k in keys}
    calls = total["calls"]
    per_k = 1000 / book_tokens if book_tokens else 0.0
    total["llm_calls_per_1000_book_tokens"] = round(calls * per_k, 3)
    total["prompt_tokens_per_1000_book_tokens"] = round(total["prompt_tokens"] * per_k, 1)
    return total


def merge(params: GenerateParams, dry_run: bool = False) -> dict[str, Any]:
    """Join the shards of a sharded run into ``output_dir``'s qa.jsonl and manifest.json."""
    out = resolve_path(params.output_dir) / ("dry-run" if dry_run else "")
    shards = sorted((out / "shards").glob("*-of-*"))
    if not shards:
        raise FileNotFoundError(f"{out / 'shards'} holds no shard folders; run with --shard i/n first")
    expected = int(shards[0].name.split("-of-")[1])
    missing = sorted(set(range(expected)) - {int(s.name.split("-of-")[0]) for s in shards})
    if missing:
        raise RuntimeError(f"cannot merge: shards {missing} of {expected} have not run (no folder under {out / 'shards'})")
    manifests = []
    for shard in shards:
        path = shard / "manifest.json"
        if not path.is_file():
            state = ""
            with contextlib.suppress(OSError, ValueError):
                progress = json.loads((shard / "progress.json").read_text(encoding="utf-8"))
                state = f"; its progress.json says {progress['state']}" + (
                    f": {progress['reason']}" if progress.get("reason") else "")
            raise RuntimeError(f"cannot merge: shard {shard.name} has no manifest.json (not finished{state}); "
                               "python -m longctx.generate.status --params ... shows every shard")
        manifests.append(json.loads(path.read_text(encoding="utf-8")))
    assembled = assemble(out, [s / "work" / "docs" for s in shards])
    manifest = {
        "stage": "generate", "longctx_version": __version__, "merged_shards": len(shards),
        "params": {**manifests[0]["params"], "shard_index": 0, "shard_count": 1},
        "generator": manifests[0]["generator"], "tokenizer": manifests[0]["tokenizer"],
        **{k: assembled[k] for k in ("counts", "book_tokens", "walk")},
        "skipped_documents": [d for m in manifests for d in m["skipped_documents"]],
        "failed_documents": assembled["failed_documents"],
        "totals": totals(assembled["per_document"], assembled["book_tokens"]),
        "per_document": assembled["per_document"],
        "timings": {"shard_wall_s": [m["timings"]["wall_s"] for m in manifests]},
    }
    manifest["counts"]["documents_skipped"] = len(manifest["skipped_documents"])
    manifest["warnings"] = long_document_warnings(manifest["counts"], params)
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False))
    return manifest
