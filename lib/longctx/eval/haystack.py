"""Token-exact sizing of long prompts without re-tokenising the whole text at every step.

The naive way to make a prompt of N tokens (RULER's) is a search over the haystack size that
builds and tokenises the whole candidate text at each step: ~20 full tokenisations per sample
at 1M tokens. Here the haystack is a sequence of *units* (sentences, noise lines, documents,
distractor needles) tokenised once; a prefix sum over their token counts answers "how many
units fit in B tokens" with one ``searchsorted``, and needles are inserted at unit boundaries.

Why sums are exact: byte-level BPE tokenisers (Llama-3's tiktoken, GPT-2 style HF tokenisers)
first split text with a regex and never merge across those pieces. A unit that starts with a
space before a word (``" The cat sat."``) or ends with a newline after punctuation
(``"... again.\\n"``) begins a new piece in any context, so ``tokens(a + b) = tokens(a) +
tokens(b)``. The few seams that do not follow that rule (template text around the context,
stripped edges) are measured on small windows by :func:`seam_delta`. :func:`fit_units` can
verify the result with ONE tokenisation of the final prompt and trims if ever needed.

:func:`naive_fit` is the reference binary search (the bench and tests compare against it).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.tokenizer import Tokenizer

__all__ = [
    "SIZING", "largest_fitting", "count_tokens", "seam_delta", "TokenizedUnits", "tokenize_units", "split_sentences",
    "essay_units", "PromptFrame", "fit_units", "FitResult", "naive_fit", "corpus_text",
]

# "prefix": the fast way (this module). "naive": the reference way -- every size considered is
# built and tokenised in full (what RULER does); same results, used by the bench and the tests.
SIZING = "prefix"

_SENTENCE_END = re.compile(r"([.!?]+[\"'\u201d\u2019)\]]*)\s+(?=\S)")


def largest_fitting(cost: Callable[[int], int], lo: int, hi: int, budget: int) -> int:
    """Largest ``n`` in ``[lo, hi]`` with ``cost(n) <= budget`` for a non-decreasing ``cost``
    (``lo`` when none fits). Gallops up from ``lo`` (1, 2, 4, ... steps) and then bisects, so an
    expensive ``cost`` is mostly evaluated at sizes near the answer."""
    if hi <= lo or cost(lo + 1) > budget:
        return lo
    good, step = lo + 1, 1
    while True:  # gallop: find bad > good with cost(bad) > budget (or hi + 1)
        probe = min(good + 2 * step, hi)
        if probe == good:
            return good
        if cost(probe) > budget:
            bad = probe
            break
        good, step = probe, step * 2
        if good == hi:
            return hi
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if cost(mid) <= budget else (good, mid)
    return good


def count_tokens(tokenizer: Tokenizer, text: str) -> int:
    """Tokens of ``text`` as plain text (no special tokens)."""
    return len(tokenizer.encode(text)) if text else 0


def seam_delta(tokenizer: Tokenizer, left: str, right: str, window: int = 64) -> int:
    """``tokens(left + right) - tokens(left) - tokens(right)``, measured on ``window`` characters
    either side of the seam (pre-tokenisation pieces are short, so the windows see all of it)."""
    if not left or not right:
        return 0
    a, b = left[-window:], right[:window]
    return count_tokens(tokenizer, a + b) - count_tokens(tokenizer, a) - count_tokens(tokenizer, b)


@dataclass
class TokenizedUnits:
    """Text units with known token counts; ``n`` units past the end wrap around (the haystack
    repeats, as RULER repeats its essays when the target is longer than the corpus)."""

    texts: list[str]
    lengths: np.ndarray  # int64 tokens per unit
    _cum: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        if len(self.texts) != len(self.lengths):
            raise ValueError(f"{len(self.texts)} units but {len(self.lengths)} token counts")
        self._cum = np.concatenate(([0], np.cumsum(self.lengths)))

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def total(self) -> int:
        return int(self._cum[-1])

    def tokens_of_first(self, n: int) -> int:
        """Tokens of the first ``n`` units (wrapping)."""
        laps, rest = divmod(n, len(self.texts))
        return laps * self.total + int(self._cum[rest])

    def max_units_within(self, budget: int) -> int:
        """Largest ``n`` with ``tokens_of_first(n) <= budget``."""
        if budget <= 0 or self.total == 0:
            return 0
        laps, rest = divmod(budget, self.total)
        return laps * len(self.texts) + int(np.searchsorted(self._cum, rest, side="right")) - 1

    def take(self, n: int) -> list[str]:
        """The first ``n`` unit texts (wrapping)."""
        laps, rest = divmod(n, len(self.texts)) if self.texts else (0, 0)
        return self.texts * laps + self.texts[:rest]

    def lengths_of(self, n: int) -> np.ndarray:
        """Token counts of the first ``n`` units (wrapping)."""
        return self.lengths[np.arange(n) % len(self.texts)]


def tokenize_units(tokenizer: Tokenizer, texts: Sequence[str], cache_dir: str | Path | None = None,
                   cache_key: str = "") -> TokenizedUnits:
    """Tokenise every unit once (batched). With ``cache_dir`` the counts are stored under a key of
    the texts' hash and the tokenizer name, so a later run (any task, any length) reuses them."""
    texts = list(texts)
    if SIZING == "naive":  # the reference way never counts units
        return TokenizedUnits(texts, np.zeros(len(texts), dtype=np.int64))
    path = None
    if cache_dir:
        digest = hashlib.sha1("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
        safe_tok = re.sub(r"[^A-Za-z0-9_.-]+", "_", tokenizer.name)[-60:]
        path = Path(cache_dir) / f"{cache_key or 'units'}-{digest}-{safe_tok}.npy"
        if path.is_file():
            lengths = np.load(path)
            if len(lengths) == len(texts):
                return TokenizedUnits(texts, lengths)
    if len(texts) > 256:
        # one pass over the joined text: each token is counted in the unit where it starts
        # (identical to per-unit counts when units are additive, and sums to the exact total)
        table = _byte_table(tokenizer)
        joined = "".join(texts)
        if table is not None:  # token starts in bytes from a per-id byte-length table
            ids = np.asarray(tokenizer.encode(joined), dtype=np.int64)
            offsets = np.cumsum(table[ids]) - table[ids]
            starts = np.cumsum([0] + [len(t.encode("utf-8")) for t in texts[:-1]])
        else:
            _, offsets = tokenizer.encode_with_offsets(joined)
            starts = np.cumsum([0] + [len(t) for t in texts[:-1]])
        owner = np.searchsorted(starts, np.asarray(offsets), side="right") - 1
        lengths = np.bincount(owner, minlength=len(texts)).astype(np.int64)
    else:
        lengths = np.fromiter((len(ids) for ids in tokenizer.encode_batch(texts)), dtype=np.int64,
                              count=len(texts))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, lengths)
        tmp.replace(path)
    return TokenizedUnits(texts, lengths)


_BYTE_TABLES: dict[int, np.ndarray | None] = {}


def _byte_table(tokenizer: Tokenizer) -> np.ndarray | None:
    """Bytes per token id for a tiktoken tokenizer (built once per tokenizer), else None."""
    key = id(tokenizer)
    if key not in _BYTE_TABLES:
        enc = getattr(tokenizer, "_enc", None)
        table = None
        if enc is not None and hasattr(enc, "decode_single_token_bytes"):
            table = np.zeros(max(enc.n_vocab, getattr(tokenizer, "vocab_size", 0)), dtype=np.int64)
            for i in range(enc.n_vocab):
                try:
                    table[i] = len(enc.decode_single_token_bytes(i))
                except KeyError:  # unused id
                    pass
        _BYTE_TABLES[key] = table
    return _BYTE_TABLES[key]


def split_sentences(text: str) -> list[str]:
    """Whitespace-normalised sentences (a light rule: end punctuation, optional closing quote or
    bracket, then whitespace). Good enough for a haystack; needles go between sentences."""
    flat = " ".join(text.split())
    if not flat:
        return []
    return [s for s in _SENTENCE_END.sub("\\1\n", flat).split("\n") if s]


def corpus_text(spec: str) -> tuple[str, str]:
    """All usable documents of a corpus spec (see :mod:`longctx.generate.corpus`) joined, and a source
    label for reports (e.g. ``austen: 6 documents``)."""
    from ..generate.corpus import Document, iter_corpus

    docs = [d for d in iter_corpus(spec) if isinstance(d, Document)]
    if not docs:
        raise ValueError(f"haystack corpus '{spec}' holds no usable document")
    return "\n\n".join(d.text for d in docs), f"{spec}: {len(docs)} documents"


def essay_units(tokenizer: Tokenizer, text: str, cache_dir: str | Path | None = None) -> TokenizedUnits:
    """The prose haystack (RULER's essay haystack; ours is the embedded corpus): one unit per
    sentence, each with its leading space so that units concatenate additively."""
    return tokenize_units(tokenizer, [" " + s for s in split_sentences(text)], cache_dir, "essay")


# --------------------------------------------------------------------------- fitting


@dataclass
class PromptFrame:
    """The fixed text around a context: ``head + context + tail``."""

    head: str
    tail: str


@dataclass
class FitResult:
    prompt: str
    n_tokens: int          # tokens of ``prompt`` (verified when the fit was verified)
    n_units: int           # haystack units used
    verified: bool


def fit_units(tokenizer: Tokenizer, frame: PromptFrame, units: TokenizedUnits, budget: int,
              insert: Callable[[list[str]], list[str]] | None = None, fixed_tokens: int = 0,
              verify: bool = True, fill_remainder: bool = True) -> FitResult:
    """Fill ``frame`` with as many haystack units as fit in ``budget`` tokens.

    ``insert`` turns the chosen unit texts into the final list (it inserts needles, which must be
    additive units as well); ``fixed_tokens`` is what those insertions add. The context is the
    concatenation, stripped at both ends. ``fill_remainder`` closes the last gap (less than one
    unit) with the leading words of the next unit, so the prompt lands within a token or two of
    the budget. With ``verify`` the final prompt is tokenised once and, should it exceed the
    budget, the partial unit and then whole units are dropped until it fits.
    """
    head_tokens = count_tokens(tokenizer, frame.head)
    tail_tokens = count_tokens(tokenizer, frame.tail)
    probe = units.texts[0].strip() if len(units) else ""  # seams against the template, typical unit
    seams = seam_delta(tokenizer, frame.head, probe) + seam_delta(tokenizer, probe, frame.tail)
    n = max(units.max_units_within(budget - head_tokens - tail_tokens - fixed_tokens - seams), 0)

    def build(k: int, partial: str = "", partial_tokens: int = 0) -> tuple[str, int]:
        pieces = units.take(k) + ([partial] if partial else [])
        estimate = units.tokens_of_first(k) + partial_tokens + head_tokens + tail_tokens + fixed_tokens
        if pieces:
            estimate += _strip_delta(tokenizer, pieces)
        context = "".join(insert(pieces) if insert else pieces).strip()
        if context:
            estimate += seam_delta(tokenizer, frame.head, context) + seam_delta(tokenizer, context, frame.tail)
        return frame.head + context + frame.tail, estimate

    if SIZING == "naive":
        return _naive_fit(tokenizer, units, budget, build, fill_remainder)
    prompt, n_tokens = build(n)
    if fill_remainder and len(units) and budget > n_tokens:
        words = re.findall(r"\s*\S+", units.texts[n % len(units)])
        cum = np.concatenate(([0], np.cumsum([len(ids) for ids in tokenizer.encode_batch(words)]))) if words else [0]
        k = int(np.searchsorted(cum, budget - n_tokens, side="right")) - 1
        while k > 0:  # the seams with the tail may cost a token: back off word by word
            candidate = build(n, "".join(words[:k]), int(cum[k]))
            if candidate[1] <= budget:
                prompt, n_tokens = candidate
                break
            k -= 1
    if not verify:
        return FitResult(prompt, n_tokens, n, False)
    actual = count_tokens(tokenizer, prompt)
    if actual > budget:
        prompt, _ = build(n)  # without the partial unit
        actual = count_tokens(tokenizer, prompt)
    while actual > budget and n > 0:
        over, drop, acc = actual - budget, 0, 0
        lengths = units.lengths_of(n)
        while acc < over and drop < n:  # drop just enough units from the end
            drop += 1
            acc += int(lengths[n - drop])
        n -= drop
        prompt, _ = build(n)
        actual = count_tokens(tokenizer, prompt)
    return FitResult(prompt, actual, n, True)


def _naive_fit(tokenizer: Tokenizer, units: TokenizedUnits, budget: int,
               build: Callable[..., tuple[str, int]], fill_remainder: bool) -> FitResult:
    """The reference: choose the number of units, then of words of the next unit, by building and
    tokenising the whole prompt for every size tried."""
    def tokens(k: int, partial: str = "") -> int:
        return count_tokens(tokenizer, build(k, partial)[0])

    n = largest_fitting(tokens, 0, max(budget, 1), budget)
    partial = ""
    if fill_remainder and len(units):
        words = re.findall(r"\s*\S+", units.texts[n % len(units)])
        k = largest_fitting(lambda j: tokens(n, "".join(words[:j])), 0, len(words), budget)
        partial = "".join(words[:k])
    prompt = build(n, partial)[0]
    return FitResult(prompt, count_tokens(tokenizer, prompt), n, True)


def _strip_delta(tokenizer: Tokenizer, pieces: list[str]) -> int:
    """Token change from stripping whitespace at the two ends of the concatenated units."""
    first, last = pieces[0], pieces[-1]
    if len(pieces) == 1:
        return count_tokens(tokenizer, first.strip()) - count_tokens(tokenizer, first)
    delta = 0
    if first != first.lstrip():
        delta += count_tokens(tokenizer, first.lstrip()) - count_tokens(tokenizer, first)
    if last != last.rstrip():
        delta += count_tokens(tokenizer, last.rstrip()) - count_tokens(tokenizer, last)
    return delta


def naive_fit(tokenizer: Tokenizer, build: Callable[[int], str], budget: int, upper: int) -> tuple[int, str, int]:
    """The reference method: binary search on the haystack size ``n`` in ``[0, upper]``, building
    and tokenising the whole candidate prompt at every step. Returns ``(n, prompt, tokens)`` for
    the largest ``n`` whose prompt fits ``budget``."""
    lo, hi = 0, upper
    best = (0, build(0))
    while lo <= hi:
        mid = (lo + hi) // 2
        text = build(mid)
        if count_tokens(tokenizer, text) <= budget:
            best = (mid, text)
            lo = mid + 1
        else:
            hi = mid - 1
    return best[0], best[1], count_tokens(tokenizer, best[1])
