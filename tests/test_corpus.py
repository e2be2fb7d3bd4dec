"""Corpus sources and bad documents: reported by id with a reason, never a crash."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longctx.generate.austen import NOVELS, load_austen
from longctx.generate.corpus import Document, Skipped, iter_corpus
from longctx.core.tokenizer import load_tokenizer


def split(items):
    return [i for i in items if isinstance(i, Document)], [i for i in items if isinstance(i, Skipped)]


def test_austen_is_six_real_novels_offline():
    novels = load_austen()
    assert [k for k, _, _ in novels] == list(NOVELS)
    tok = load_tokenizer()
    counts = {k: len(tok.encode(t)) for k, _, t in novels}
    assert all(90_000 < n < 220_000 for n in counts.values()), counts
    assert 850_000 < sum(counts.values()) < 1_000_000
    emma = dict((k, t) for k, _, t in novels)["emma"]
    assert emma.startswith("EMMA\n\nBy Jane Austen") and "Emma Woodhouse, handsome, clever, and rich" in emma
    docs, skipped = split(list(iter_corpus("austen")))
    assert len(docs) == 6 and not skipped and docs[1].title == "Pride and Prejudice"


def test_txt_folder_reports_bad_files(tmp_path):
    (tmp_path / "a_good_book.txt").write_text("A real text.\n\nWith paragraphs.")
    (tmp_path / "b_empty.txt").write_text("")
    (tmp_path / "c_blank.txt").write_text("  \n\t\n")
    (tmp_path / "d_latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    docs, skipped = split(list(iter_corpus(str(tmp_path))))
    assert [d.id for d in docs] == ["a_good_book"] and docs[0].title == "a good book"
    reasons = {s.id: s.reason for s in skipped}
    assert reasons["b_empty"] == "empty or whitespace-only text"
    assert reasons["c_blank"] == "empty or whitespace-only text"
    assert reasons["d_latin1"].startswith("not valid UTF-8 (byte 3")


def test_jsonl_reports_bad_lines_by_line_number(tmp_path):
    path = tmp_path / "books.jsonl"
    rows = [json.dumps({"id": "b1", "text": "Good text.", "title": "One"}), "{not json",
            json.dumps({"id": "b3", "body": "wrong field"}), json.dumps({"id": "b4", "text": 7}), "",
            json.dumps({"text": "No id, row number used."})]
    path.write_text("\n".join(rows) + "\n")
    docs, skipped = split(list(iter_corpus(str(path))))
    assert [(d.id, d.title) for d in docs] == [("b1", "One"), ("5", "5")]
    assert [(s.id, s.source.split(":")[-1]) for s in skipped] == [("line-2", "2"), ("b3", "3"), ("b4", "4")]
    assert skipped[0].reason.startswith("not valid JSON")
    assert skipped[1].reason == "missing text field 'text' (row has: body, id)"
    assert skipped[2].reason == "text field is int, expected a string"
    gz = tmp_path / "books.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert [d.id for d in split(list(iter_corpus(str(gz))))[0]] == ["b1", "5"]


def test_parquet_with_custom_fields(tmp_path):
    path = tmp_path / "books.parquet"
    pq.write_table(pa.table({"book_id": ["x", "y"], "content": ["Some text.", ""]}), path)
    docs, skipped = split(list(iter_corpus(str(path), text_field="content", id_field="book_id")))
    assert [d.id for d in docs] == ["x"] and skipped[0].id == "y"


def test_missing_and_unsupported_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; expected 'austen'"):
        list(iter_corpus(str(tmp_path / "nope")))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        list(iter_corpus(str(tmp_path / "x.csv")))
    with pytest.raises(FileNotFoundError, match="holds no \\*.txt files"):
        list(iter_corpus(str(tmp_path)))


def write_zst(path, rows, frames=1):
    """A .jsonl.zst like the hub's: one JSON object per line, optionally several zstd frames."""
    import zstandard

    lines = [(r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows]
    step = -(-len(lines) // frames)
    parts = ["".join(lines[i:i + step]).encode() for i in range(0, len(lines), step)]
    path.write_bytes(b"".join(zstandard.ZstdCompressor(level=3).compress(p) for p in parts))
    return path


BOOK_ROWS = [  # shaped like Long-Data-Collections' pretrain/book.jsonl.zst: no id, title under meta
    {"text": "It was a dark night.\n\nThe end.", "meta": {"short_book_title": "Night Book", "url": "u1"}},
    {"text": "No title here.", "meta": {"url": "u2"}},
    {"text": "   ", "meta": {"short_book_title": "Blank"}},
    {"text": "Flat key wins.", "meta": {"short_book_title": "Nested"}, "meta.short_book_title": "Flat"},
    {"meta": {"short_book_title": "No text"}},
]


@pytest.mark.parametrize("frames", [1, 2])
def test_jsonl_zst_with_nested_title(tmp_path, frames):
    path = write_zst(tmp_path / "book.jsonl.zst", BOOK_ROWS, frames)
    docs, skipped = split(list(iter_corpus(str(path), title_field="meta.short_book_title")))
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("0", "Night Book", BOOK_ROWS[0]["text"]), ("1", "1", "No title here."), ("3", "Flat", "Flat key wins.")]
    assert [(s.id, s.reason) for s in skipped] == [
        ("2", "empty or whitespace-only text"), ("4", "missing text field 'text' (row has: meta)")]
    assert docs[2].source == f"{path}:4"
    # nested text and id paths too, and a path through a non-object is "missing"
    nested = write_zst(tmp_path / "n.jsonl.zst", [{"doc": {"body": "Deep text.", "key": "k1"}}, {"doc": "flat"}])
    docs, skipped = split(list(iter_corpus(str(nested), text_field="doc.body", id_field="doc.key")))
    assert [(d.id, d.text) for d in docs] == [("k1", "Deep text.")]
    assert skipped[0].reason.startswith("missing text field 'doc.body'")


def test_jsonl_zst_through_datasets_streaming(tmp_path):
    """The hub path: datasets' own json builder streams the .zst (it needs zstandard, as we do)."""
    path = write_zst(tmp_path / "book.jsonl.zst", BOOK_ROWS)
    docs, skipped = split(list(iter_corpus("hf:json", data_files=str(path), title_field="meta.short_book_title",
                                           revision="0123abc")))
    assert [(d.id, d.title) for d in docs] == [("0", "Night Book"), ("1", "1"), ("3", "Flat")]
    assert docs[0].source == "hf:json@0123abc#0" and len(skipped) == 2


def test_books_file_needs_a_revision():
    from longctx.core.config import ParamsError, from_mapping
    from longctx.generate.params import GenerateParams

    spec = {"corpus": "hf:togethercomputer/Long-Data-Collections", "corpus_data_files": "pretrain/book.jsonl.zst",
            "llm_base_url": "http://x/v1"}
    with pytest.raises(ParamsError, match="corpus_revision.*deleted from togethercomputer/Long-Data-Collections's "
                                          "main branch in commit 613289c"):
        from_mapping(GenerateParams, spec)
    from_mapping(GenerateParams, {**spec, "corpus_revision": "0" * 40})
    with pytest.raises(ValueError, match="set corpus_revision to a commit before it"):
        next(iter_corpus(spec["corpus"], data_files=spec["corpus_data_files"]))
