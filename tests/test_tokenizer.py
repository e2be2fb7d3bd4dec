"""The tokenizer's array path (stage 2's cold path) against the Hugging Face fast tokenizer built
from the same ``tokenizer.model`` (the reference ids), on both tiktoken code paths."""

import json
from pathlib import Path

import numpy as np
import pytest

from longctx.core import tokenizer as tokmod
from longctx.core.tokenizer import load_tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "austen_openings.json"


@pytest.fixture(scope="module")
def texts():
    docs = json.loads(FIXTURE.read_text())["documents"]
    # Novels' openings, a prefix cut mid-word, text with special-token strings (must stay plain
    # text), non-ASCII, whitespace runs and an empty text.
    return [d["text"] for d in docs] + [
        docs[0]["text"][:1001], "<|eot_id|> plain <|begin_of_text|>", "café — naïve “quotes” 日本語",
        "  \n\n\t  spaces\r\n\r\n", ""]


@pytest.fixture(scope="module")
def fast():
    pytest.importorskip("transformers")
    from longctx.core.fast_tokenizer import llama3_fast_tokenizer
    return llama3_fast_tokenizer()


@pytest.mark.parametrize("numpy_encode", [True, False], ids=["encode_to_numpy", "list"])
def test_encode_arrays_equal_the_reference_tokenizer(texts, fast, numpy_encode, monkeypatch):
    monkeypatch.setattr(tokmod, "_NUMPY_ENCODE", numpy_encode)
    tok = load_tokenizer("llama3")
    arrays = tok.encode_arrays(texts)
    assert len(arrays) == len(texts)
    for text, ids in zip(texts, arrays):
        assert ids.dtype == np.int32
        reference = fast(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert ids.tolist() == reference, text[:60]
        assert ids.tolist() == tok.encode(text)
    assert tok.encode_batch(texts) == [a.tolist() for a in arrays]
    assert tok.encode_arrays([]) == []


def test_threads_follow_the_usable_cores():
    assert tokmod._threads(1) == 1
    assert 1 <= tokmod._threads(1000) <= 1000
