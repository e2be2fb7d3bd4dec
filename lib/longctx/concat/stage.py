"""Stage 2: concatenate documents and their QA into 180K..1M-token chat samples (Algorithm 2).

    python -m longctx.concatenate --params params/demo/02_concatenate.yaml
    python -m longctx.concatenate --params params/paper/02_concatenate.yaml --set seed=1

Reads stage 1's ``qa.jsonl`` (docs/CONTRACTS.md), writes one parquet file of samples per stage
(``{output_dir}/{stage}.parquet``, read with :func:`longctx.concat.samples.open_samples`) and
``{output_dir}/manifest.json``. Token ids are assembled from pieces tokenised once (documents,
questions, answers, headers), so sample lengths are exact and answer spans are exact by
construction; see :mod:`longctx.concat.layout` for the chat layout and :mod:`longctx.concat.plan`
for how documents are chosen and cut. Same input, params and seed give the same samples.

Lengths: "K" in stage names means 1,024 tokens (1M = 1,048,576 = 2^20), the usual meaning for
context windows (Llama-3.1's "128K" is 131,072); ``target_tokens`` is always an explicit integer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import string
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.config import ParamsError, bad, load_params, param, parse_overrides, resolve_path, to_dict
from ..generate.windows import QA_TOKENS_PER_DOCUMENT
from .layout import LAYOUTS, SampleLayout
from .plan import FITS, LEVELS, SamplePlan, SamplePlanner, StageBudgetError
from .qa_store import QAStore, read_qa_store
from .samples import SampleWriter

__all__ = ["StageSpec", "ConcatConfig", "Concatenator", "run", "stage_summary", "questions_kept", "main",
           "StageBudgetError"]

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. The user shares documents, each labelled with its number and "
    "title, and asks questions about them. Each question names the document it is about; answer "
    "it from that document.")


@dataclass
class StageSpec:
    """One curriculum stage: a length budget and how many samples to make at it."""

    name: str = param("", "stage name; the samples go to {output_dir}/{name}.parquet")
    target_tokens: int = param(8192, "most tokens per sample, template and special tokens included "
                               "(K = 1,024: 180K = 184,320)", min=64)
    n_samples: int = param(1, "samples to write for this stage", min=1)
    docs_per_sample: int | None = param(None, "documents per sample; null = add documents until the "
                                        "target is reached (our choice for the 180K stage)", min=1)

    def check(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise bad("name", f"must be a file-name-safe word (letters, digits, _ . -), got {self.name!r}")


def _demo_stages() -> list[StageSpec]:
    return [StageSpec("4K", 4096, 8, 1), StageSpec("8K", 8192, 8, 2)]


@dataclass
class ConcatConfig:
    """Parameters of stage 2 (``params/*/02_concatenate.yaml``, notebook 02)."""

    qa_path: str = param("runs/demo/01_generate_qa/qa.jsonl", "stage-1 output to read (relative to the "
                         "project root)")
    output_dir: str = param("runs/demo/02_concatenate", "where the stage parquet files and "
                            "manifest.json go")
    stages: list[StageSpec] = param(_demo_stages(), "curriculum stages: name, target_tokens, "
                                    "n_samples, docs_per_sample")
    seed: int = param(0, "random seed; each stage draws from (seed, stage name)")
    n_diverse_per_doc: int = param(9, "diverse questions right after their document (paper: 9)", min=0)
    revisit_probability: float = param(0.6, "chance that a later document is followed by questions "
                                       "about a given earlier one (paper: 0.6)", min=0.0, max=1.0)
    n_revisit: int = param(3, "questions per revisit of an earlier document (paper: 3)", min=0)
    fill_fraction: float = param(0.95, "a sample has at least this fraction of target_tokens",
                                 min=0.0, max=1.0)
    layout: str = param("interleaved", "interleaved: each document then its questions (paper); "
                        "documents_first: all documents, then all questions (ablation)",
                        choices=LAYOUTS)
    reuse_documents: bool = param(True, "allow a document in several samples of a stage (never "
                                  "twice in one sample); uses are reported in the manifest")
    system_prompt: str = param(DEFAULT_SYSTEM_PROMPT, "system message, after Llama-3.1's stock date lines "
                               "(as its chat template writes them); empty = the date lines only")
    document_header: str = param("Document {number}: {title}", "line that opens each document "
                                 "({number} = 1-based place in the sample)")
    question_prefix: str = param("Question about Document {number} ({title}):", "text before every "
                                 "question, naming its document")
    max_attempts: int = param(50, "document choices tried per sample before giving up", min=1)

    def check(self) -> None:
        names = [s.name for s in self.stages]
        if not names:
            raise bad("stages", "needs at least one stage")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise bad("stages", f"stage names must be unique; repeated: {dup}")
        for key in ("document_header", "question_prefix"):
            fields = {f for _, f, _, _ in string.Formatter().parse(getattr(self, key)) if f is not None}
            if fields - {"number", "title"}:
                raise bad(key, f"may use only {{number}} and {{title}}, found {sorted(fields)}")
            if "number" not in fields:
                raise bad(key, "must contain {number} so questions name their document")


# --------------------------------------------------------------------------- the stage


class Concatenator:
    """Stage 2 over one qa.jsonl: plans and writes each stage's samples."""

    def __init__(self, cfg: ConcatConfig, store: QAStore | None = None):
        self.cfg = cfg
        self.store = store or read_qa_store(resolve_path(cfg.qa_path))
        self.layout = SampleLayout(self.store, system_prompt=cfg.system_prompt,
                                   document_header=cfg.document_header,
                                   question_prefix=cfg.question_prefix, layout=cfg.layout)
        self.planner = SamplePlanner(self.layout, n_diverse=cfg.n_diverse_per_doc,
                                     revisit_probability=cfg.revisit_probability,
                                     n_revisit=cfg.n_revisit, fill_fraction=cfg.fill_fraction,
                                     reuse_documents=cfg.reuse_documents,
                                     max_attempts=cfg.max_attempts)

    def check(self) -> None:
        """Every stage's budget against the input, before any sample is made."""
        for spec in self.cfg.stages:
            self.planner.check_stage(spec.name, spec.target_tokens, spec.n_samples, spec.docs_per_sample)

    def stage_rng(self, spec: StageSpec) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, zlib.crc32(spec.name.encode())])

    def plans(self, spec: StageSpec):
        """Yield the plans of a stage's samples, in order (deterministic for a seed)."""
        rng = self.stage_rng(spec)
        usage = np.zeros(len(self.store), dtype=np.int64)
        for _ in range(spec.n_samples):
            plan = self.planner.plan(spec.target_tokens, spec.docs_per_sample, usage, rng)
            for d in plan.documents:
                usage[d.position] += 1
            yield plan

    def build(self, plan: SamplePlan):
        """Token ids and answer spans of a plan (an :class:`longctx.concat.chat.EncodedChat`)."""
        self.store.prefetch([d.position for d in plan.documents], [d.chunks_kept for d in plan.documents])
        encoded = self.layout.chat.encode(self.layout.turns(plan))
        if len(encoded.input_ids) != plan.n_tokens:
            raise AssertionError(f"planned {plan.n_tokens} tokens, assembled {len(encoded.input_ids)}")
        return encoded

    def metadata(self, plan: SamplePlan, spec: StageSpec, index: int) -> dict[str, Any]:
        docs = self.store.documents
        return {
            "sample_id": f"{spec.name}-{index:06d}", "stage": spec.name,
            "target_tokens": spec.target_tokens, "n_tokens": plan.n_tokens,
            "fill_fraction": plan.n_tokens / spec.target_tokens,
            "n_answer_tokens": plan.n_answer_tokens, "n_document_tokens": plan.n_document_tokens,
            "doc_ids": [docs[d.position].id for d in plan.documents],
            "doc_chunks_kept": [d.chunks_kept for d in plan.documents],
            "doc_chunks_total": [d.n_chunks for d in plan.documents],
            "n_hierarchical": plan.counts["hierarchical"], "n_diverse": plan.counts["diverse"],
            "n_revisit": plan.counts["revisit"], "n_global": plan.kept["global"],
            "n_section": plan.kept["section"], "n_chunk": plan.kept["chunk"],
            **{f"planned_{k}": v for k, v in plan.planned.items()},
            "fit": plan.fit, "n_documents_cut": plan.n_documents_cut, "n_tokens_cut": plan.n_tokens_cut,
            "n_qa_dropped_truncation": sum(d.n_dropped for d in plan.documents),
            "n_qa_trimmed": plan.n_qa_trimmed,
            "revisit_pairs": plan.revisit_pairs, "revisit_drawn": plan.revisit_drawn,
            "revisit_shortfall": plan.revisit_shortfall, "revisit_distances": plan.revisit_distances, "layout": self.cfg.layout,
        }

    def _window_for(self, slot: int) -> int:
        """The ``max_window_tokens`` whose windows fit ``slot`` whole: the slot less what this
        input's documents add to their text (header, QA turns; the median, estimated as the
        planner estimates costs), at least 1,024 tokens."""
        usable = np.asarray(self.planner.usable, dtype=np.int64)
        index = self.planner.index
        if not len(usable):
            return max(slot - QA_TOKENS_PER_DOCUMENT, 1024)
        n_tokens = np.array([self.store.documents[p].n_tokens for p in usable])
        extra = float(np.median(index.cost(usable, index.n_diverse + index.n_revisit) - n_tokens))
        return max(int(slot - extra) // 1024 * 1024, 1024)

    def write_stage(self, spec: StageSpec, output_dir: Path,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
        """Write ``{output_dir}/{spec.name}.parquet``; return the stage's manifest entry."""
        start = time.perf_counter()
        path = output_dir / f"{spec.name}.parquet"
        fills, answer_fracs, attempts, uses = [], [], [], {}
        kept_text: dict[str, list[tuple[int, int]]] = {}  # document -> (sample, text tokens it kept)
        totals = {"tokens": 0, "answer_tokens": 0, "hierarchical": 0, "diverse": 0, "revisit": 0,
                  "qa_dropped_truncation": 0, "qa_trimmed": 0, "documents_cut": 0, "tokens_cut": 0,
                  "revisit_pairs": 0, "revisit_drawn": 0, "revisit_shortfall": 0}
        levels = {k: {"planned": 0, "kept": 0} for k in LEVELS}
        fits = dict.fromkeys(FITS, 0)
        with SampleWriter(path) as writer:
            for index, plan in enumerate(self.plans(spec)):
                encoded = self.build(plan)
                meta = self.metadata(plan, spec, index)
                writer.write(encoded.input_ids, spans=(encoded.label_starts, encoded.label_ends), **meta)
                fills.append(meta["fill_fraction"])
                answer_fracs.append(plan.n_answer_tokens / plan.n_tokens)
                attempts.append(plan.attempts)
                for doc_id, d in zip(meta["doc_ids"], plan.documents):
                    uses[doc_id] = uses.get(doc_id, 0) + 1
                    kept_text.setdefault(doc_id, []).append(
                        (index, self.store.documents[d.position].n_tokens - d.n_tokens_cut))
                totals["tokens"] += plan.n_tokens
                totals["answer_tokens"] += plan.n_answer_tokens
                for kind in ("hierarchical", "diverse", "revisit"):
                    totals[kind] += plan.counts[kind]
                totals["qa_dropped_truncation"] += meta["n_qa_dropped_truncation"]
                totals["qa_trimmed"] += plan.n_qa_trimmed
                totals["documents_cut"] += plan.n_documents_cut
                totals["tokens_cut"] += plan.n_tokens_cut
                fits[plan.fit] += 1
                for k in LEVELS:
                    levels[k]["planned"] += plan.planned[k]
                    levels[k]["kept"] += plan.kept[k]
                totals["revisit_pairs"] += plan.revisit_pairs
                totals["revisit_drawn"] += plan.revisit_drawn
                totals["revisit_shortfall"] += plan.revisit_shortfall
        seconds = time.perf_counter() - start
        reused = {k: v for k, v in uses.items() if v > 1}
        overlap, pair = _largest_overlap(kept_text)
        usable = len(self.planner.usable)
        even = -(-sum(uses.values()) // usable)  # uses per document if every usable one took its turn
        warnings = []
        if max(uses.values()) > even + 1:
            warnings.append(f"heavy reuse: a document is used {max(uses.values())} times in {spec.n_samples} samples "
                            f"where {usable} usable documents would give at most {even} uses each")
        for level in ("global", "section"):
            planned, kept = levels[level]["planned"], levels[level]["kept"]
            if planned and kept < 0.9 * planned:
                slot = spec.target_tokens // (spec.docs_per_sample or 1)
                longer = sum(self.store.documents[p].n_tokens > slot for p in self.planner.usable)
                warnings.append(
                    f"only {kept / planned:.0%} of {level} questions kept ({kept:,} of {planned:,}): a cut "
                    f"document loses every question on its cut chunks (all its global ones), and {longer} of "
                    f"{usable} usable documents are longer than a slot of ~{slot:,} tokens "
                    f"({spec.target_tokens:,} / {spec.docs_per_sample or 1} documents); fix: regenerate stage 1 "
                    f"with max_window_tokens <= {self._window_for(slot):,} (long documents become "
                    "windows placed whole; longctx.generate.windows), or use fewer documents per sample")
        if overlap > 0.5 * spec.target_tokens:
            warnings.append(f"samples {pair[0]} and {pair[1]} share {overlap:,} document tokens "
                            f"({overlap / spec.target_tokens:.0%} of the {spec.target_tokens:,}-token target): "
                            "add documents, or lower n_samples")
        entry = {
            "name": spec.name, "file": path.name, "target_tokens": spec.target_tokens,
            "n_samples": spec.n_samples, "docs_per_sample": spec.docs_per_sample,
            "fill_min": min(fills), "fill_mean": float(np.mean(fills)), "fill_max": max(fills),
            "answer_token_fraction_mean": float(np.mean(answer_fracs)),
            **totals,
            "questions": {k: {**v, "kept_fraction": v["kept"] / v["planned"] if v["planned"] else None}
                          for k, v in levels.items()},
            "fits": fits,
            "revisit_rate": totals["revisit_drawn"] / totals["revisit_pairs"] if totals["revisit_pairs"] else None,
            "documents_used": len(uses), "document_slots": sum(uses.values()),
            "documents_reused": len(reused), "max_uses_of_a_document": max(uses.values()),
            "uses_if_even": even, "largest_sample_overlap_tokens": overlap,
            "largest_sample_overlap_pair": list(pair), "warnings": warnings,
            "plan_attempts_max": max(attempts), "seconds": round(seconds, 3),
        }
        log(f"stage {spec.name}: {spec.n_samples} samples, {totals['tokens']:,} tokens, fill "
            f"{entry['fill_min']:.3f}..{entry['fill_max']:.3f}, {len(uses)} documents "
            f"({len(reused)} reused, at most {entry['max_uses_of_a_document']}x; two samples share at most "
            f"{overlap:,} document tokens), {seconds:.1f}s -> {path}")
        for warning in warnings:
            log(f"WARNING stage {spec.name}: {warning}")
        return entry


def _largest_overlap(kept_text: dict[str, list[tuple[int, int]]]) -> tuple[int, tuple[int, int]]:
    """The most document text two samples share, and which two (sample indices). A sample keeps
    a prefix of each document, so two samples with one document share the shorter prefix."""
    shared: dict[tuple[int, int], int] = {}
    for uses in kept_text.values():
        for i, (a, tokens_a) in enumerate(uses):
            for b, tokens_b in uses[i + 1:]:
                shared[(a, b)] = shared.get((a, b), 0) + min(tokens_a, tokens_b)
    if not shared:
        return 0, (-1, -1)
    pair = max(shared, key=shared.get)
    return shared[pair], pair


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(cfg: ConcatConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Stage 2 end to end: read, check every stage's budget, write samples and manifest.json."""
    start = time.perf_counter()
    qa_path = resolve_path(cfg.qa_path)
    output_dir = resolve_path(cfg.output_dir)
    concat = Concatenator(cfg)
    store = concat.store
    for item in store.dropped_qa:
        log(f"dropped QA: {qa_path}:{item['line']} document {item['doc_id']!r} {item['kind']}_qa"
            f"[{item['index']}]: {item['reason']}")
    concat.check()  # StageBudgetError before any sample is written
    output_dir.mkdir(parents=True, exist_ok=True)
    stages = {spec.name: concat.write_stage(spec, output_dir, log) for spec in cfg.stages}
    n_qa = sum(len(d.hierarchical) + len(d.diverse) for d in store.documents)
    manifest = {
        "stage": "concatenate",
        "params": to_dict(cfg),
        "input": {"qa_path": str(qa_path), "sha256": _sha256(qa_path), "documents": len(store),
                  "usable_documents": len(concat.planner.usable),
                  "tokens": sum(d.n_tokens for d in store.documents), "qa": n_qa,
                  # documents that are windows of a long book (stage 1's max_window_tokens), and those books
                  "windows": sum(d.parent is not None for d in store.documents),
                  "windowed_books": len({d.parent for d in store.documents if d.parent is not None})},
        "tokenizer": store.tokenizer.name,
        "k_means": 1024,
        "dropped_qa_bad_grounding": len(store.dropped_qa),
        "dropped_qa": store.dropped_qa[:100],
        "stages": stages,
        "document_encodes": store.n_document_encodes,
        "document_prefix_encodes": store.n_prefix_encodes,
        "seconds": round(time.perf_counter() - start, 3),
    }
    (output_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def stage_summary(manifest: dict[str, Any]):
    """One row per stage of a manifest, as a pandas DataFrame (the notebook's table)."""
    import pandas as pd

    cols = ["target_tokens", "n_samples", "docs_per_sample", "fill_min", "fill_mean",
            "answer_token_fraction_mean", "hierarchical", "diverse", "revisit", "revisit_rate", "revisit_shortfall",
            "qa_dropped_truncation", "qa_trimmed", "documents_cut", "tokens_cut", "documents_used",
            "documents_reused", "max_uses_of_a_document", "largest_sample_overlap_tokens", "seconds"]
    return pd.DataFrame([{c: s[c] for c in cols} for s in manifest["stages"].values()],
                        index=list(manifest["stages"]))


def questions_kept(manifest: dict[str, Any]):
    """Planned vs kept questions by level, documents and tokens cut, per stage (a DataFrame)."""
    import pandas as pd

    rows = {}
    for name, s in manifest["stages"].items():
        row = {}
        for level, v in s["questions"].items():
            row[f"{level} kept/planned"] = f"{v['kept']}/{v['planned']}"
        row.update({"documents cut": f"{s['documents_cut']}/{s['document_slots']}", "tokens cut": s["tokens_cut"],
                    **{f"fit {k}": v for k, v in s["fits"].items()}})
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


# bench/bench_concat_keep.py's results: corpus -> results stem (issue 19 §4: long books as windows)
KEEP_BENCHMARKS = {"100K-median books": "concat_keep", "250K-median books": "concat_keep_250k"}


def keep_at_paper_scale(results_dir: str | Path = "bench/results"):
    """Global and section questions kept at the paper's stages on 7,772 synthetic books, per corpus
    (``bench/bench_concat_keep.py``: long books split by stage 1 into windows), as a DataFrame;
    goal: >= 90 % everywhere. Corpora whose results file is missing are left out."""
    import csv

    import pandas as pd

    rows = []
    for corpus, stem in KEEP_BENCHMARKS.items():
        path = resolve_path(results_dir) / f"{stem}.csv"
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                rows.append({"corpus": corpus, "stage": r["stage"],
                             "global kept": float(r["global_kept_fraction"]),
                             "section kept": float(r["section_kept_fraction"]),
                             "documents cut": f"{int(r['documents_cut']):,}/{int(r['documents']):,}"})
    frame = pd.DataFrame(rows, columns=["corpus", "stage", "global kept", "section kept", "documents cut"])
    frame["goal met"] = (frame["global kept"] >= 0.9) & (frame["section kept"] >= 0.9)
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.concatenate", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True, help="YAML file of ConcatConfig parameters")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter (VALUE parsed as YAML), e.g. --set seed=1")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ParamsError as err:
        parser.error(str(err))
    cfg = load_params(ConcatConfig, args.params, overrides or None)
    try:
        run(cfg)
    except StageBudgetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
