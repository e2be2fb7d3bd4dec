"""Long books as windows (issue 19 §4): stage 1 splits a document longer than a stage-2 slot at
section boundaries into documents of their own, stage 2 places them whole, and the keep benchmark
shows the global and section questions it saves."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from longctx import generate
from longctx.concat.plan import LEVELS
from longctx.concat.qa_store import QAFileError, read_qa_store
from longctx.concat.stage import ConcatConfig, Concatenator, StageSpec
from longctx.concat.synthetic_books import lognormal_lengths, synthetic_store
from longctx.core.config import ParamsError, from_mapping, load_params, project_root
from longctx.core.tokenizer import load_tokenizer
from longctx.generate.chunking import chunk_document
from longctx.generate.corpus import Document
from longctx.generate.params import GenerateParams
from longctx.generate import outputs as stage1_outputs
from longctx.generate.stage import fingerprint
from longctx.generate.windows import (DEFAULT_WINDOW_TOKENS, PAPER_STAGE_SLOTS, QA_TOKENS_PER_DOCUMENT,
                                      split_windows, window_bounds, window_tokens_for_slots)

from austen_books import FIXTURE, write_openings


def test_window_bounds_by_hand():
    # sections of 10, 10, 10, 5, 10 tokens; windows of at most 24: [0, 2) = 20, [2, 4) = 15, [4, 5) = 10;
    # of at most 25: [0, 2) = 20, [2, 5) = 25
    spans = [(0, 10), (10, 20), (20, 30), (30, 35), (35, 45)]
    assert window_bounds(spans, 24) == [(0, 2), (2, 4), (4, 5)]
    assert window_bounds(spans, 25) == [(0, 2), (2, 5)]
    assert window_bounds(spans, 45) == [(0, 5)]
    assert window_bounds(spans, 30) == [(0, 3), (3, 5)]
    with pytest.raises(ValueError, match="span 0 covers 10 tokens, more than a window of 9"):
        window_bounds(spans, 9)


def test_default_window_comes_from_the_paper_stages_slots():
    """The constant agrees with params/paper/02_concatenate.yaml, and a window's whole document
    (text + its QA, as the planner costs it) fits the largest per-document slot."""
    from longctx.concat.select import LengthIndex

    cfg = load_params(ConcatConfig, project_root() / "params/paper/02_concatenate.yaml")
    assert tuple((s.target_tokens, s.docs_per_sample) for s in cfg.stages) == PAPER_STAGE_SLOTS
    assert DEFAULT_WINDOW_TOKENS == window_tokens_for_slots() == 83_968  # (358,400 / 4 - 5,000) // 1,024 x 1,024
    assert GenerateParams().max_window_tokens == DEFAULT_WINDOW_TOKENS
    store = synthetic_store([DEFAULT_WINDOW_TOKENS] * 20, seed=4)
    concat = Concatenator(cfg, store=store)
    cost = LengthIndex(concat.layout, list(range(20)), 9, 3).cost(np.arange(20), 9 + 3)  # one revisit coin
    assert cost.max() <= 358_400 / 4
    assert cost.min() >= DEFAULT_WINDOW_TOKENS + 0.8 * QA_TOKENS_PER_DOCUMENT  # the allowance is not loose


def test_window_below_a_section_is_a_params_error():
    remote = {"llm_base_url": "http://x/v1"}
    with pytest.raises(ParamsError, match="key 'max_window_tokens': must be 0 or >= medium_chunk_tokens"):
        from_mapping(GenerateParams, {"max_window_tokens": 8192, **remote})  # medium_chunk_tokens 12,288
    assert from_mapping(GenerateParams, {"max_window_tokens": 0, **remote}).max_window_tokens == 0


def _text() -> str:
    docs = json.loads(FIXTURE.read_text())["documents"]
    return "\n\n".join(d["text"] for d in docs)


def test_split_windows_cover_the_text_at_chunk_boundaries():
    tok = load_tokenizer("llama3")
    text = _text()
    doc = Document("book", "A Book", "fixture", text)
    chunking = chunk_document(text, tok, 128, 384)
    assert chunking.n_tokens > 2000
    parts = split_windows(doc, chunking, 1000, tok, 128, 384)
    assert len(parts) >= 3
    starts = {c.char_start for c in chunking.chunks}
    joined = ""
    for k, (wdoc, wchunks, window) in enumerate(parts):
        assert wdoc.id == f"book#w{k}" and wdoc.source == "fixture"
        assert window.index == k and window.count == len(parts)
        assert window.char_start in starts and window.char_start == len(joined)
        assert wdoc.text == text[window.char_start:window.char_end]
        assert window.token_end - window.token_start <= 1000
        # the window's own tokenisation: at most a few tokens off the parent's span at its edges
        assert abs(wchunks.n_tokens - (window.token_end - window.token_start)) <= 2
        assert all(c.n_tokens <= 128 for c in wchunks.chunks) and wchunks.chunks[-1].token_end == wchunks.n_tokens
        record = window.as_record("book", chunking.n_tokens)
        assert record["parent"] == "book" and record["parent_n_tokens"] == chunking.n_tokens
        joined += wdoc.text
    assert joined == text  # nothing lost, nothing twice
    # greedy: every window but the last could not take one more section
    for (_, _, w), (_, _, nxt) in zip(parts, parts[1:]):
        assert chunking.chunks[nxt.first_chunk].token_end - w.token_start > 1000
    # short enough, or windows off: the document as it is
    assert split_windows(doc, chunking, 0, tok, 128, 384) == [(doc, chunking, None)]
    assert split_windows(doc, chunking, chunking.n_tokens, tok, 128, 384)[0][2] is None


def _keep(lengths, stages, seed=0):
    concat = Concatenator(ConcatConfig(stages=stages, seed=seed, reuse_documents=False),
                          store=synthetic_store(lengths, seed=seed))
    concat.check()
    planned, kept = dict.fromkeys(LEVELS, 0), dict.fromkeys(LEVELS, 0)
    for spec in stages:
        for plan in concat.plans(spec):
            for k in LEVELS:
                planned[k] += plan.planned[k]
                kept[k] += plan.kept[k]
    return {k: kept[k] / planned[k] for k in ("global", "section")}


def test_windows_keep_the_global_questions_of_long_books():
    """Books of about 3 slots (the 250K-median corpus scaled down 4x: 62.5K books, 22.4K slots):
    whole, a 4-document stage cuts them and keeps few global questions; as windows it keeps >= 90 %."""
    sys_path = str(project_root() / "bench")
    import sys

    sys.path.insert(0, sys_path)
    try:
        from bench_concat_keep import windowed
    finally:
        sys.path.remove(sys_path)
    lengths = lognormal_lengths(120, median=62_500, sigma=0.4, seed=5, low=30_000)
    stages = [StageSpec("4docs", 89_600, 20, 4), StageSpec("fill", 46_080, 20, None)]
    window = window_tokens_for_slots([(89_600, 4)])  # (22,400 - 5,000) // 1,024 x 1,024
    assert window == 16_384
    whole = _keep(lengths, stages)
    parts = windowed(lengths, window)
    assert len(parts) > 3 * len(lengths) and parts.max() <= window
    split = _keep(parts, stages)
    assert whole["global"] < 0.5, whole
    assert split["global"] >= 0.9 and split["section"] >= 0.9, split


def test_old_qa_files_read_and_a_bad_window_field_is_named(tmp_path):
    """A record without ``window`` (every file written before windows) is a whole document; a bad
    ``window`` is an error naming the file, line, document and field."""
    from fixtures.austen_qa import write_austen_qa

    path = write_austen_qa(tmp_path / "qa.jsonl")
    store = read_qa_store(path)
    assert all(d.parent is None and d.window is None for d in store.documents)
    lines = path.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[1])
    rec["window"] = {"index": 0, "count": 2, "parent": "emma"}
    good = lines[:1] + [json.dumps(rec)] + lines[2:]
    path.write_text("\n".join(good) + "\n", encoding="utf-8")
    doc = read_qa_store(path).documents[1]
    assert (doc.parent, doc.window) == ("emma", 0)
    for bad, message in ((3, "key 'window' must be dict"),
                         ({"index": 2, "count": 2, "parent": "emma"}, "field 'window': index 2 is not in 0..1"),
                         ({"index": 0, "count": 2}, "field 'window': missing key 'parent'")):
        rec["window"] = bad
        path.write_text("\n".join(lines[:1] + [json.dumps(rec)] + lines[2:]) + "\n", encoding="utf-8")
        with pytest.raises(QAFileError, match=f"qa.jsonl:2: document '{rec['id']}'.*{message}"):
            read_qa_store(path)


def test_stage1_writes_windows_that_stage2_places_whole(tmp_path, capsys, monkeypatch):
    """The joint: a dry run of stage 1 with a window smaller than the documents writes one record
    per window (own id, own hierarchy, ``window`` field), counts them in the manifest and the
    projection; stage 2 reads them and fills a sample of two windows without a cut."""
    folder = write_openings(tmp_path / "books", 2)
    path = tmp_path / "p.yaml"
    path.write_text(f"corpus: {folder}\noutput_dir: {tmp_path / 'out'}\nsmall_chunk_tokens: 256\n"
                    "medium_chunk_tokens: 512\nmax_document_tokens: 2048\nmax_window_tokens: 1024\n"
                    "n_hierarchical: 4\nn_global_questions: 1\nn_diverse: 4\nprogress: false\n"
                    "llm_base_url: http://stand-in/v1\ncorpus_documents: 100\n")
    run = tmp_path / "out" / "dry-run"
    # first whole documents, as a run from before windows existed wrote them (same fingerprint); with
    # the paper's slot scaled down to 1,000 tokens they are too long for it, and stage 1 says so
    monkeypatch.setattr(stage1_outputs, "DEFAULT_WINDOW_TOKENS", 1000)
    assert generate.main(["--params", str(path), "--dry-run", "--set", "max_window_tokens=0"]) == 0
    whole = [json.loads(line) for line in (run / "qa.jsonl").read_text().splitlines()]
    assert len(whole) == 2 and not any("window" in r for r in whole) and whole[0]["n_tokens"] > 1024
    warnings = json.loads((run / "manifest.json").read_text())["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("2 of 2 documents are longer than 1,000 tokens")
    assert "fix: rerun with max_window_tokens=1000" in warnings[0]
    assert "WARNING: 2 of 2 documents" in capsys.readouterr().err
    monkeypatch.undo()
    params = load_params(GenerateParams, path)
    for doc_file in (run / "work" / "docs").glob("*.json"):
        entry = json.loads(doc_file.read_text())
        entry["fingerprint"] = fingerprint(dataclasses.replace(
            params, output_dir=str(run), cache_dir=str(run / "cache"), min_answer_support=0.0))
        doc_file.write_text(json.dumps(entry))
    capsys.readouterr()
    # then with windows: a whole document longer than the window is redone as windows, not reused
    assert generate.main(["--params", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((run / "manifest.json").read_text())
    records = [json.loads(line) for line in (run / "qa.jsonl").read_text().splitlines()]
    parents = [r["window"]["parent"] for r in records]
    assert len(set(parents)) == 2 and len(records) >= 4
    for r in records:
        w = r["window"]
        assert r["id"] == f"{w['parent']}#w{w['index']}" and w["count"] == parents.count(w["parent"])
        assert r["n_tokens"] <= 1024 + 2 and r["summaries"]["global"]
        assert {q["level"] for q in r["hierarchical_qa"]} >= {"global"}
    c = manifest["counts"]
    assert manifest["warnings"] == []
    assert c["documents_windowed"] == 2 and c["windows"] == len(records) == c["documents_written"]
    p = manifest["projection"]
    assert p["sampled_documents"] == 2 and p["windows"] == round(len(records) * 50) and p["records"] == p["windows"]
    assert f"2 sampled documents were longer than max_window_tokens and became {len(records)} windows" in out

    store = read_qa_store(run / "qa.jsonl")
    assert [d.parent for d in store.documents] == parents
    sizes = sorted(d.n_tokens for d in store.documents)
    # two windows and their QA (the stand-in's answers are long: ~150 tokens) fill 2.5K..5K
    cfg = ConcatConfig(stages=[StageSpec("two", 5 * 1024, 4, 2)], fill_fraction=0.5, reuse_documents=True)
    concat = Concatenator(cfg, store=store)
    concat.check()
    plans = list(concat.plans(cfg.stages[0]))
    assert sizes[-1] + sizes[-2] < 5 * 1024 and len(plans) == 4
    assert all(plan.n_documents_cut == 0 and plan.kept["global"] == plan.planned["global"] > 0 for plan in plans)
