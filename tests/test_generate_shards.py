"""Scale-out and dry runs: shards + merge equal one run; bad documents reported once, by id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longctx import generate
from longctx.config import from_mapping
from longctx.generate_params import GenerateParams

FIXTURE = Path(__file__).parent / "fixtures" / "austen_openings.json"


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    for i, doc in enumerate(json.loads(FIXTURE.read_text())["documents"][:4]):
        (folder / f"{i}_{doc['id']}.txt").write_text(doc["text"])
    (folder / "9_empty.txt").write_text("   \n")
    (folder / "9_short.txt").write_text("Only a line.")
    return folder


def params(corpus, out, **extra):
    return from_mapping(GenerateParams, {
        "corpus": str(corpus), "output_dir": str(out), "small_chunk_tokens": 512, "medium_chunk_tokens": 1024,
        "max_document_tokens": 3072, "n_hierarchical": 6, "n_diverse": 8, "progress": False,
        "llm_base_url": "http://stand-in/v1", "price_input_per_mtok": 1.0, "price_output_per_mtok": 2.0, **extra})


def test_shards_then_merge_equal_a_single_run(corpus, tmp_path):
    single = generate.run(params(corpus, tmp_path / "single"), dry_run=True)
    assert single["counts"]["documents_written"] == 4
    skipped = {d["id"]: d["reason"] for d in single["skipped_documents"]}
    assert skipped["9_empty"] == "empty or whitespace-only text"
    assert skipped["9_short"].startswith("shorter than one small chunk (")
    assert single["totals"]["cost_usd"] > 0 and single["totals"]["prompt_tokens"] > 0

    for index in range(2):
        generate.run(params(corpus, tmp_path / "sharded", shard_index=index, shard_count=2), dry_run=True)
    merged = generate.merge(params(corpus, tmp_path / "sharded"), dry_run=True)
    a = (tmp_path / "single" / "dry-run" / "qa.jsonl").read_text()
    b = (tmp_path / "sharded" / "dry-run" / "qa.jsonl").read_text()
    assert a == b and a.count("\n") == 4
    assert merged["counts"]["documents_written"] == 4 and merged["merged_shards"] == 2
    # each bad document is reported once, not once per shard
    assert sorted(d["id"] for d in merged["skipped_documents"]) == sorted(skipped)
    assert merged["totals"]["prompt_tokens"] == single["totals"]["prompt_tokens"]


def test_merge_refuses_missing_shards(corpus, tmp_path):
    generate.run(params(corpus, tmp_path / "s", shard_index=1, shard_count=3), dry_run=True)
    with pytest.raises(RuntimeError, match=r"shards \[0, 2\] of 3 have not run"):
        generate.merge(params(corpus, tmp_path / "s"), dry_run=True)


def test_rerun_reuses_finished_documents_and_redoes_after_a_param_change(corpus, tmp_path):
    first = generate.run(params(corpus, tmp_path / "r"), dry_run=True)
    again = generate.run(params(corpus, tmp_path / "r"), dry_run=True)
    assert again["this_invocation"]["resumed_documents"] == 4
    assert again["this_invocation"]["llm_total"]["calls"] == 0
    changed = generate.run(params(corpus, tmp_path / "r", n_diverse=9), dry_run=True)
    assert changed["this_invocation"]["resumed_documents"] == 0
    # the unchanged requests come from the cache; only the new diverse question is sent
    calls = changed["this_invocation"]["llm_total"]
    assert calls["cache_hits"] > 0 and calls["requests"] <= 4 * 2
    assert first["counts"]["diverse_qa"] < changed["counts"]["diverse_qa"]


def test_cli_shard_flag_and_bad_params(corpus, tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(f"corpus: {corpus}\noutput_dir: {tmp_path / 'cli'}\nsmall_chunk_tokens: 512\n"
                    "medium_chunk_tokens: 1024\nn_hierarchical: 3\nn_diverse: 3\nprogress: false\n"
                    "llm_base_url: http://stand-in/v1\n")
    assert generate.main(["--params", str(path), "--shard", "0/2", "--dry-run"]) == 0
    assert (tmp_path / "cli" / "dry-run" / "shards" / "00000-of-00002" / "qa.jsonl").is_file()
    path.write_text("n_diverse: -1\n")
    assert generate.main(["--params", str(path)]) == 2
    assert f"{path}:1: key 'n_diverse': must be >= 0, got -1" in capsys.readouterr().err
