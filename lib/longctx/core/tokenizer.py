"""Token counting with Llama-3.1's tokenizer, offline by default.

``load_tokenizer("llama3")`` (the default everywhere) reads Meta's ``tokenizer.model`` shipped
inside the ``llama-models`` package and runs it with ``tiktoken``: same ids as the Hugging Face
``meta-llama/Llama-3.1-8B-Instruct`` tokenizer, no hub access. Any other string is handed to
``transformers.AutoTokenizer.from_pretrained`` (a hub name or a local path).

Both kinds answer the same small interface, :class:`Tokenizer`; the pipeline never touches the
underlying library.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

__all__ = ["Tokenizer", "TiktokenLlama3", "HFTokenizer", "load_tokenizer", "llama3_model_path"]

DEFAULT_TOKENIZER = "llama3"
_NUMPY_ENCODE = True  # tests switch it off to check the older-tiktoken path gives the same ids


def _threads(n_texts: int) -> int:
    """Threads for a batch: one per core this process may use, at most one per text."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(n_texts, cores))

# Llama 3 pre-tokenizer split pattern, as published with the model.
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_NAMED_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
]
_LLAMA3_N_SPECIALS = 256  # ids 128000..128255


class Tokenizer(Protocol):
    """What the pipeline needs from a tokenizer."""

    name: str
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as plain text: special-token strings are not interpreted."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many texts (threaded where the backend allows)."""

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """``encode_batch`` as int32 arrays (for long texts: no Python list of ints on the way)."""

    def encode_with_offsets(self, text: str) -> tuple[list[int], np.ndarray]:
        """Ids of ``text`` and, per id, the character offset in ``text`` where it starts."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""

    def special_id(self, token: str) -> int:
        """Id of a special token such as ``<|eot_id|>``; KeyError names the token."""


def llama3_model_path() -> Path:
    """Path of ``tokenizer.model`` inside the installed ``llama-models`` package."""
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the offline Llama-3 tokenizer needs the 'llama-models' package: "
            "pip install --no-deps llama-models (or pass a Hugging Face tokenizer name)")
    path = Path(list(spec.submodule_search_locations)[0]) / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise RuntimeError(f"llama-models is installed but {path} is missing")
    return path


@dataclass
class TiktokenLlama3:
    """Meta's Llama-3 BPE run by tiktoken."""

    model_path: Path
    name: str = DEFAULT_TOKENIZER

    def __post_init__(self) -> None:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(self.model_path))
        names = _LLAMA3_NAMED_SPECIALS + [
            f"<|reserved_special_token_{2 + i}|>"
            for i in range(_LLAMA3_N_SPECIALS - len(_LLAMA3_NAMED_SPECIALS))]
        self._specials = {tok: len(ranks) + i for i, tok in enumerate(names)}
        self._enc = tiktoken.Encoding(name="llama3", pat_str=_LLAMA3_PATTERN,
                                      mergeable_ranks=ranks, special_tokens=self._specials)
        self.vocab_size = len(ranks) + len(names)

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts), num_threads=_threads(len(texts)))

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        # tiktoken's own encoder in a pool of one thread per usable core (its batch default of
        # 8 threads on 2 cores measured 1.6x slower); ``encode_to_numpy`` (tiktoken >= 0.9)
        # skips the list of Python ints, with ``disallowed_special=()`` and no allowed specials
        # it equals ``encode_ordinary``. Older tiktoken: the list, converted.
        texts = list(texts)
        if not texts:
            return []
        if _NUMPY_ENCODE and hasattr(self._enc, "encode_to_numpy"):
            def one(text: str) -> np.ndarray:
                return self._enc.encode_to_numpy(text, disallowed_special=()).astype(np.int32)
        else:
            def one(text: str) -> np.ndarray:
                return np.asarray(self._enc.encode_ordinary(text), dtype=np.int32)
        if len(texts) == 1:  # a single document (the on-demand path): no pool to start
            return [one(texts[0])]
        with ThreadPoolExecutor(_threads(len(texts))) as pool:
            return list(pool.map(one, texts))

    def encode_with_offsets(self, text: str) -> tuple[list[int], np.ndarray]:
        ids = self._enc.encode_ordinary(text)
        # Token byte lengths -> byte offsets -> character offsets (utf-8 aware). A token that
        # starts inside a multi-byte character maps to that character's start.
        lengths = np.fromiter((len(b) for b in self._enc.decode_tokens_bytes(ids)), dtype=np.int64,
                              count=len(ids))
        byte_starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(ids) else np.zeros(0, np.int64)
        raw = text.encode("utf-8")
        is_char_start = (np.frombuffer(raw, dtype=np.uint8) & 0xC0) != 0x80
        char_index = np.cumsum(is_char_start) - 1  # byte -> index of the char it belongs to
        return ids, char_index[byte_starts] if len(ids) else byte_starts

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))

    @property
    def encoding(self):
        """The underlying ``tiktoken.Encoding`` (for converters and byte-level checks)."""
        return self._enc

    def special_id(self, token: str) -> int:
        try:
            return self._specials[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a special token of {self.name}") from None


class HFTokenizer:
    """Any Hugging Face tokenizer (name on the hub or local path)."""

    def __init__(self, name_or_path: str):
        from transformers import AutoTokenizer

        self.name = name_or_path
        self._tok = AutoTokenizer.from_pretrained(name_or_path)
        self.vocab_size = len(self._tok)

    def encode(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._tok(list(texts), add_special_tokens=False)["input_ids"]

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int32) for ids in self.encode_batch(texts)] if texts else []

    def encode_with_offsets(self, text: str) -> tuple[list[int], np.ndarray]:
        out = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return out["input_ids"], np.array([s for s, _ in out["offset_mapping"]], dtype=np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))

    def special_id(self, token: str) -> int:
        tid = self._tok.convert_tokens_to_ids(token)
        if tid is None or tid == self._tok.unk_token_id:
            raise KeyError(f"{token!r} is not a special token of {self.name}")
        return tid

    @property
    def hf(self):
        """The wrapped ``transformers`` tokenizer (chat templates, etc.)."""
        return self._tok


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str = DEFAULT_TOKENIZER) -> Tokenizer:
    """``"llama3"``: the offline Llama-3.1 tokenizer; anything else: a Hugging Face tokenizer."""
    if name == DEFAULT_TOKENIZER:
        return TiktokenLlama3(llama3_model_path())
    return HFTokenizer(name)
