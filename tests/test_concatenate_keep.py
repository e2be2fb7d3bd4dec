"""Stage 2 keeps the top of the hierarchy: documents chosen by length fill samples whole, at most
one document is cut, and the manifest's planned / kept / cut counts equal counts taken
independently from the written samples and qa.jsonl."""

import json
from collections import Counter

import numpy as np
import pytest
from fixtures.austen_qa import write_austen_qa

from longctx.concat.stage import ConcatConfig, Concatenator, StageSpec, run
from longctx.concat.plan import LEVELS
from longctx.concat.samples import open_samples
from longctx.concat.synthetic_books import lognormal_lengths, synthetic_store


def _plans(store, stages, seed=0, reuse=False):
    cfg = ConcatConfig(stages=stages, seed=seed, reuse_documents=reuse)
    concat = Concatenator(cfg, store=store)
    concat.check()
    return concat, {s.name: list(concat.plans(s)) for s in stages}


def test_whole_documents_fill_samples_and_keep_every_global_question():
    """300 books around 24K tokens: whole-document fills exist for 3-document and fill-to-target
    samples of 64K; every sample is filled whole and keeps every question it planned."""
    store = synthetic_store(lognormal_lengths(300, median=24_000, sigma=0.5, seed=1, low=4096), seed=1)
    stages = [StageSpec("3docs", 65536, 40, 3), StageSpec("fill", 65536, 40, None)]
    concat, plans = _plans(store, stages)
    for name, stage_plans in plans.items():
        for plan in stage_plans:
            assert plan.fit == "whole"
            assert plan.n_documents_cut == 0 and plan.n_tokens_cut == 0
            assert plan.kept == plan.planned
            assert 0.95 * 65536 <= plan.n_tokens <= 65536
            assert plan.planned["global"] == 2 * len(plan.documents)  # the walk's 2 per book
    # the rule it replaces (cut the largest document, chunk by chunk) loses global questions here
    old = concat.planner._plan_with_cuts(65536, 3, np.zeros(len(store), dtype=np.int64),
                                         np.random.default_rng(0), 0)
    assert old.kept["global"] < old.planned["global"]


def test_at_most_one_document_is_cut_when_no_whole_fill_exists():
    """Books of 36-44K tokens with questions, 2 per 64K sample: no two whole books fit, so every
    sample cuts exactly one, and the other keeps all its questions."""
    lengths = np.random.default_rng(2).integers(36_000, 44_000, size=200)
    store = synthetic_store(lengths, seed=2)
    _, plans = _plans(store, [StageSpec("2docs", 65536, 20, 2)])
    for plan in plans["2docs"]:
        assert plan.fit == "one_cut" and plan.n_documents_cut == 1
        whole = [d for d in plan.documents if d.chunks_kept == d.n_chunks]
        assert len(whole) == 1 and whole[0].n_dropped == 0
        assert plan.kept["global"] == plan.planned["global"] - 2  # only the cut book's two
        assert plan.n_tokens_cut == sum(d.n_tokens_cut for d in plan.documents) > 0


def test_selection_is_seeded_and_deterministic():
    store = synthetic_store(lognormal_lengths(200, median=24_000, sigma=0.5, seed=3, low=4096), seed=3)
    stages = [StageSpec("s", 65536, 20, 3)]
    ids = [[[d.position for d in p.documents] for p in _plans(store, stages, seed)[1]["s"]] for seed in (4, 4, 5)]
    assert ids[0] == ids[1] and ids[0] != ids[2]


# --------------------------------------------------------------------------- manifest vs samples


def _independent_counts(sample, records, tok):
    """Planned and kept questions by level, documents and tokens cut, from the decoded sample
    and the qa.jsonl records alone."""
    text = tok.decode(sample["input_ids"])
    kind_of = {}
    for rec in records.values():
        for qa in rec["hierarchical_qa"]:
            kind_of[(rec["title"], qa["question"].strip())] = qa["level"]
        for qa in rec["diverse_qa"]:
            kind_of[(rec["title"], qa["question"].strip())] = "diverse"
    kept, planned = Counter(), Counter()
    current = 0
    turns = text.split("<|start_header_id|>user<|end_header_id|>\n\n")[1:]
    titles = [records[i]["title"] for i in sample["doc_ids"]]
    for turn in turns:
        body = turn.split("<|eot_id|>")[0]
        if body.startswith("Document "):
            current = int(body[len("Document "):body.index(":")])
        q = body[body.rindex("Question about Document "):]
        number = int(q[len("Question about Document "):].split(" ")[0])
        question = q.split("): ", 1)[1]
        level = kind_of[(titles[number - 1], question)]
        kept["revisit" if number != current else level] += 1
    cut, tokens_cut = 0, 0
    for number, doc_id in enumerate(sample["doc_ids"], start=1):
        rec = records[doc_id]
        planned.update(qa["level"] for qa in rec["hierarchical_qa"])
        planned["diverse"] += min(9, len(rec["diverse_qa"]))
        head = f"Document {number}: {rec['title']}\n\n"
        k = max(i + 1 for i, c in enumerate(rec["chunks"]) if head + rec["text"][:c["char_end"]] in text)
        if k < len(rec["chunks"]):
            cut += 1
            tokens_cut += rec["n_tokens"] - rec["chunks"][k - 1]["token_end"]
    planned["revisit"] = 3 * sample["revisit_drawn"]
    return kept, planned, cut, tokens_cut


@pytest.mark.parametrize("layout", ["interleaved"])
def test_manifest_counts_equal_counts_from_the_written_samples(tmp_path, layout):
    qa = write_austen_qa(tmp_path / "qa.jsonl")
    records = {r["id"]: r for r in map(json.loads, qa.read_text().splitlines())}
    stages = [StageSpec("6K", 6144, 12, 2), StageSpec("auto", 10000, 8, None)]
    cfg = ConcatConfig(qa_path=str(qa), output_dir=str(tmp_path / "o"), stages=stages, seed=3, layout=layout)
    manifest = run(cfg, log=lambda _: None)
    tok = Concatenator(cfg).store.tokenizer
    for spec in stages:
        entry = manifest["stages"][spec.name]
        kept_all, planned_all, cut_all, tokens_all = Counter(), Counter(), 0, 0
        for sample in open_samples(tmp_path / "o", stage=spec.name):
            kept, planned, cut, tokens_cut = _independent_counts(sample, records, tok)
            for level in LEVELS:
                assert sample[f"planned_{level}"] == planned[level], level
            assert [sample["n_global"], sample["n_section"], sample["n_chunk"], sample["n_diverse"],
                    sample["n_revisit"]] == [kept[k] for k in LEVELS]
            assert (sample["n_documents_cut"], sample["n_tokens_cut"]) == (cut, tokens_cut)
            assert sample["fit"] == ("whole" if cut == 0 else "one_cut" if cut == 1 else "cuts")
            kept_all += kept
            planned_all += planned
            cut_all += cut
            tokens_all += tokens_cut
        for level in LEVELS:
            assert entry["questions"][level]["kept"] == kept_all[level]
            assert entry["questions"][level]["planned"] == planned_all[level]
        assert (entry["documents_cut"], entry["tokens_cut"]) == (cut_all, tokens_all)
        assert sum(entry["fits"].values()) == spec.n_samples
    assert sum(manifest["stages"][s.name]["documents_cut"] for s in stages) > 0  # cuts were exercised


def test_cut_documents_tokenise_only_their_kept_chunks(tmp_path):
    """A cut document is tokenised up to its kept chunks (+ one spare); the samples equal those
    assembled from whole-text tokenisations."""
    qa = write_austen_qa(tmp_path / "qa.jsonl")
    cfg = ConcatConfig(qa_path=str(qa), stages=[StageSpec("6K", 6144, 10, 2)], seed=5)
    concat = Concatenator(cfg)
    concat.store.cache_tokens = 1  # nothing stays cached: every sample starts cold
    plans = list(concat.plans(cfg.stages[0]))
    built = [concat.build(plan).input_ids for plan in plans]
    assert concat.store.n_prefix_encodes > 0
    reference = Concatenator(cfg)
    for p in range(len(reference.store)):  # whole texts, tokenised in full, kept in the cache
        reference.store.document_ids(p)
    assert reference.store.n_prefix_encodes == 0
    for plan, ids in zip(plans, built):
        np.testing.assert_array_equal(ids, reference.build(plan).input_ids)
