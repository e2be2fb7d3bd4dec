"""Chunking: exact spans of one tokenisation, budgets never exceeded, cuts at boundaries."""

from __future__ import annotations

import pytest

from longctx.generate.austen import load_austen
from longctx.generate.chunking import chunk_document
from longctx.core.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("llama3")


@pytest.fixture(scope="module")
def emma():
    return dict((k, t) for k, _, t in load_austen())["emma"]


def test_llama3_tokenizer_matches_reference_ids(tok):
    assert tok.encode("Hello world") == [9906, 1917]
    assert tok.special_id("<|begin_of_text|>") == 128000
    assert tok.special_id("<|eot_id|>") == 128009
    assert tok.vocab_size == 128256


def test_offsets_point_at_token_starts(tok):
    text = "Naïve café — “quoted” text.\n\nNext paragraph, 2024 ✓."
    ids, starts = tok.encode_with_offsets(text)
    assert starts[0] == 0 and list(starts) == sorted(starts)
    pieces = [text[a:b] for a, b in zip(list(starts), list(starts[1:]) + [len(text)])]
    assert "".join(pieces) == text


@pytest.mark.parametrize("small, medium", [(4096, 12288), (512, 1536), (300, 300)])
def test_spans_are_exact_contiguous_and_within_budget(tok, emma, small, medium):
    text = emma[:300_000]
    c = chunk_document(text, tok, small, medium)
    assert c.token_ids == tok.encode(text)
    assert c.chunks[0].token_start == 0 and c.chunks[-1].token_end == c.n_tokens
    assert c.chunks[0].char_start == 0 and c.chunks[-1].char_end == len(text)
    for a, b in zip(c.chunks, c.chunks[1:]):
        assert a.token_end == b.token_start and a.char_end == b.char_start
    assert all(0 < ch.n_tokens <= small for ch in c.chunks)
    assert all(0 < s.n_tokens <= medium for s in c.sections)
    # decoded ids of a span are exactly the span's text
    for ch in c.chunks[:5]:
        assert tok.decode(c.token_ids[ch.token_start:ch.token_end]) == text[ch.char_start:ch.char_end]
    # sections are runs of whole chunks, in order, and every chunk belongs to one
    assert [cid for s in c.sections for cid in s.chunk_ids] == list(range(len(c.chunks)))
    for s in c.sections:
        assert s.token_start == c.chunks[s.chunk_ids[0]].token_start
        assert s.token_end == c.chunks[s.chunk_ids[-1]].token_end
        assert all(c.chunks[i].section_id == s.section_id for i in s.chunk_ids)


def test_chunks_end_at_paragraph_or_sentence_boundaries(tok, emma):
    text = emma[:200_000]
    c = chunk_document(text, tok, 1024, 3072)
    for ch in c.chunks[:-1]:
        before = text[:ch.char_end].rstrip(" ")
        assert before.endswith("\n") or before[-1] in '.!?;:"\'”’)]_*', repr(text[ch.char_end - 30:ch.char_end + 10])
    fills = [ch.n_tokens / 1024 for ch in c.chunks[:-1]]
    assert min(fills) >= 0.5


def test_run_on_text_without_boundaries_is_cut_at_budget(tok):
    text = "word" * 5000  # no spaces, no punctuation
    c = chunk_document(text, tok, 100, 300)
    assert all(ch.n_tokens <= 100 for ch in c.chunks)
    assert "".join(text[ch.char_start:ch.char_end] for ch in c.chunks) == text


def test_multibyte_text_never_cut_inside_a_character(tok):
    text = "日本語のテキスト。" * 800
    c = chunk_document(text, tok, 64, 128)
    assert "".join(text[ch.char_start:ch.char_end] for ch in c.chunks) == text
    assert all(ch.n_tokens <= 64 for ch in c.chunks)


def test_rejects_impossible_budgets(tok):
    with pytest.raises(ValueError, match=r"small_chunk_tokens \(512\) <= medium_chunk_tokens \(256\)"):
        chunk_document("text", tok, 512, 256)
