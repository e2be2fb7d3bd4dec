"""Scale-out and dry runs: shards + merge equal one run; bad documents reported once, by id."""

from __future__ import annotations

import json

import pytest

from longctx import generate
from longctx.core.config import from_mapping
from longctx.generate.params import GenerateParams

from austen_books import FIXTURE, write_openings


@pytest.fixture
def corpus(tmp_path):
    folder = write_openings(tmp_path / "books", 4)
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


@pytest.fixture
def books_zst(tmp_path):
    """The fixture's books as a .jsonl.zst shaped like the hub's books file (title under meta), plus bad rows."""
    import zstandard

    docs = json.loads(FIXTURE.read_text())["documents"][:4]
    rows = [{"text": d["text"], "meta": {"short_book_title": d["id"].title()}} for d in docs]
    rows[2:2] = [{"text": "  "}, {"meta": {}}]  # two bad rows between good ones
    path = tmp_path / "book.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


def test_prepared_shard_files_give_the_streamed_output(books_zst, tmp_path):
    from longctx.generate import corpus_shards

    extra = {"title_field": "meta.short_book_title", "corpus_shards_dir": str(tmp_path / "prepared")}
    single = generate.run(params(books_zst, tmp_path / "single", title_field="meta.short_book_title"), dry_run=True)
    manifest = corpus_shards.prepare(params(books_zst, tmp_path / "x", **extra), 4)
    assert manifest["documents"] == 4 and manifest["documents_per_file"] == [1, 1, 1, 1] and manifest["complete"]
    assert sorted(s["id"] for s in manifest["skipped"]) == ["2", "3"]
    # shard 1 of 2 reads files 1 and 3 only: remove the others and it still runs
    for j in (0, 2):
        corpus_shards.shard_file(tmp_path / "prepared", j, 4).rename(tmp_path / f"away-{j}")
    generate.run(params(books_zst, tmp_path / "sharded", shard_index=1, shard_count=2, **extra), dry_run=True)
    for j in (0, 2):
        (tmp_path / f"away-{j}").rename(corpus_shards.shard_file(tmp_path / "prepared", j, 4))
    generate.run(params(books_zst, tmp_path / "sharded", shard_index=0, shard_count=2, **extra), dry_run=True)
    merged = generate.merge(params(books_zst, tmp_path / "sharded", **extra), dry_run=True)
    a = (tmp_path / "single" / "dry-run" / "qa.jsonl").read_text()
    assert a == (tmp_path / "sharded" / "dry-run" / "qa.jsonl").read_text() and a.count("\n") == 4
    titles = [d["id"].title() for d in json.loads(FIXTURE.read_text())["documents"][:4]]
    assert [json.loads(line)["title"] for line in a.splitlines()] == titles
    assert sorted(d["id"] for d in merged["skipped_documents"]) == sorted(d["id"] for d in single["skipped_documents"])
    # a second prepare with the same settings does nothing; a count that does not divide is refused
    assert corpus_shards.prepare(params(books_zst, tmp_path / "x", **extra), 4) == manifest
    with pytest.raises(RuntimeError, match="holds 4 shard files, which 3 shards cannot split evenly"):
        list(corpus_shards.assigned_documents(params(books_zst, tmp_path / "y", shard_count=3, **extra)))


def test_prepared_shard_files_refuse_what_they_cannot_serve(books_zst, tmp_path):
    from longctx.generate import corpus_shards

    extra = {"corpus_shards_dir": str(tmp_path / "prepared")}
    with pytest.raises(FileNotFoundError, match="holds no prepared corpus .* --shards 2"):
        list(corpus_shards.assigned_documents(params(books_zst, tmp_path / "o", shard_count=2, **extra)))
    manifest = corpus_shards.prepare(params(books_zst, tmp_path / "o", max_documents=2, **extra), 2)
    assert manifest["documents"] == 2 and not manifest["complete"]
    got = [(p, d.id) for p, d in corpus_shards.assigned_documents(params(books_zst, tmp_path / "o", max_documents=1,
                                                                         shard_count=2, **extra)) if p >= 0]
    assert got == [(0, "0")]
    with pytest.raises(RuntimeError, match="holds the first 2 documents only"):
        list(corpus_shards.assigned_documents(params(books_zst, tmp_path / "o", shard_count=2, **extra)))
    with pytest.raises(RuntimeError, match="prepared from another corpus .*'text_field': \\('text', 'body'\\)"):
        list(corpus_shards.assigned_documents(params(books_zst, tmp_path / "o", max_documents=2, shard_count=2,
                                                     text_field="body", **extra)))
