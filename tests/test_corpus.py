"""Corpus sources and bad documents: reported by id with a reason, never a crash."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longctx.austen import NOVELS, load_austen
from longctx.corpus import Document, Skipped, iter_corpus
from longctx.tokenizer import load_tokenizer


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
