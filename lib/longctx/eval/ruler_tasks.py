"""RULER's synthetic generators: needle-in-a-haystack, variable tracking, common and frequent words.

Each ``make_*`` returns ``(prompt, answer_prefix, references, n_tokens, meta)`` for one sample
whose prompt + prefix fit ``budget`` tokens. Haystacks are sized with the prefix sums of
:mod:`longctx.eval.haystack` (niah, vt) or with a closed-form token count evaluated in a binary
search over the size (cwe, fwe): neither tokenises the whole candidate text more than once.
"""

from __future__ import annotations

import random
import string
import uuid
from typing import Any

import numpy as np

from . import haystack
from .haystack import (PromptFrame, TokenizedUnits, count_tokens, fit_units, largest_fitting, seam_delta,
                       tokenize_units)
from .ruler_spec import ANSWER_PREFIXES, NEEDLE, NOISE, TEMPLATES, RulerContext, RulerTask

__all__ = ["make_niah", "make_vt", "make_cwe", "make_fwe", "DEPTHS", "insert_at_fractions", "zeta"]

DEPTHS = [int(round(x)) for x in np.linspace(0, 100, num=40)]  # RULER's 40 needle depths (%)
Result = tuple[str, str, list[str], int, dict[str, Any]]


def insert_at_fractions(pieces: list[str], items: list[tuple[float, str]]) -> list[str]:
    """Insert each ``(fraction, text)`` before unit ``int(fraction * len(pieces))``; items with the
    same position keep their order (a variable chain stays in order)."""
    slots: dict[int, list[str]] = {}
    for fraction, text in items:
        slots.setdefault(min(int(fraction * len(pieces)), len(pieces)), []).append(text)
    out: list[str] = []
    for i in range(len(pieces) + 1):
        out.extend(slots.get(i, ()))
        if i < len(pieces):
            out.append(pieces[i])
    return out


def _frame(template: str, **fields: Any) -> PromptFrame:
    head, tail = template.format(context="\x00", **fields).split("\x00")
    return PromptFrame(head, tail)


def _random_value(kind: str, rng: random.Random, words: list[str]) -> str:
    if kind == "numbers":
        return str(rng.randint(10 ** 6, 10 ** 7 - 1))  # 7 digits, as RULER
    if kind == "words":
        return f"{rng.choice(words)}-{rng.choice(words)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}")


def _unit_tokens(ctx: RulerContext, texts: list[str]) -> int:
    return sum(len(ids) for ids in ctx.tokenizer.encode_batch(texts)) if texts else 0


# --------------------------------------------------------------------------- niah


def make_niah(spec: RulerTask, ctx: RulerContext, length: int, budget: int, rng: random.Random,
              index: int = 0) -> Result:
    a = spec.args
    words = ctx.words()
    n_keys = max(a["num_keys"], a["num_queries"])
    kind, singular = a["type_value"], a["type_value"][:-1]
    keys, values, needles = [], [], []
    while len(keys) < n_keys:
        key = _random_value(a["type_key"], rng, words)
        if key in keys:
            continue
        keys.append(key)
        values.append([_random_value(kind, rng, words) for _ in range(a["num_values"])])
        needles += [NEEDLE.format(kind_singular=singular, key=key, value=v) for v in values[-1]]
    rng.shuffle(needles)
    asked = rng.sample(range(n_keys), a["num_queries"])
    queries = [keys[i] for i in asked]
    answers = [v for i in asked for v in values[i]]
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    one = a["num_queries"] * a["num_values"] == 1
    fields = dict(kind=singular if one else kind, query=query, Some="A" if one else "Some",
                  are="is" if one else "are", are_all="is" if one else "are all", them="it" if one else "them")
    frame = _frame(TEMPLATES["niah"], **fields)
    prefix = ANSWER_PREFIXES["niah"].format(**fields)
    prefix_tokens = count_tokens(ctx.tokenizer, prefix)

    haystack = a["haystack"]
    if haystack == "essay":
        units = ctx.essay()
        needle_units = [" " + n for n in needles]
        fractions = [d / 100 for d in sorted(rng.sample(DEPTHS, len(needles)))]
    else:
        needle_units = [n + "\n" for n in needles]
        fractions = sorted(rng.random() for _ in needles)
        if haystack == "noise":
            units = TokenizedUnits([NOISE + "\n"], [count_tokens(ctx.tokenizer, NOISE + "\n")])
        else:  # "needle": the haystack is distractor needles of the same shape
            units = _distractors(ctx, a, budget, rng, set(keys), words, singular)
    items = list(zip(fractions, needle_units))
    fit = fit_units(ctx.tokenizer, frame, units, budget - prefix_tokens,
                    insert=lambda pieces: insert_at_fractions(pieces, items),
                    fixed_tokens=_unit_tokens(ctx, needle_units), verify=ctx.verify,
                    fill_remainder=haystack != "needle")
    meta = {"haystack": haystack, "needles": needles, "depth_fractions": fractions,
            "haystack_units": fit.n_units, "verified": fit.verified}
    if haystack == "essay":
        meta["haystack_source"] = ctx.haystack_source
    return fit.prompt, prefix, answers, fit.n_tokens + prefix_tokens, meta


def _random_values(kind: str, gen: np.random.Generator, words: list[str], n: int) -> list[str]:
    """``n`` random keys or values at once (vectorised draws; same kinds as :func:`_random_value`)."""
    if kind == "numbers":
        return [str(v) for v in gen.integers(10 ** 6, 10 ** 7, size=n)]
    if kind == "words":
        pick = gen.integers(0, len(words), size=(n, 2))
        return [f"{words[i]}-{words[j]}" for i, j in pick]
    if kind == "uuids":
        raw = gen.bytes(16 * n)
        return [str(uuid.UUID(bytes=raw[16 * i:16 * i + 16], version=4)) for i in range(n)]
    raise ValueError(f"unknown needle type {kind!r}")


def _distractors(ctx: RulerContext, a: dict, budget: int, rng: random.Random, exclude: set[str],
                 words: list[str], singular: str) -> TokenizedUnits:
    """Distractor needles holding a little more than ``budget`` tokens: the count comes from the
    mean length of a probe batch (+10%), so little is generated in vain and the sequence does
    not depend on how the haystack is sized later."""
    gen = np.random.default_rng(rng.getrandbits(64))

    def batch(n: int) -> list[str]:
        keys = _random_values(a["type_key"], gen, words, n)
        values = _random_values(a["type_value"], gen, words, n)
        return [NEEDLE.format(kind_singular=singular, key=k, value=v) + "\n"
                for k, v in zip(keys, values) if k not in exclude]

    texts = batch(64)
    mean = count_tokens(ctx.tokenizer, "".join(texts)) / max(len(texts), 1)
    texts += batch(max(int(budget / max(mean, 1.0) * 1.1) + 16 - len(texts), 0))
    return tokenize_units(ctx.tokenizer, texts)


# --------------------------------------------------------------------------- variable tracking


def _chains(rng: random.Random, num_chains: int, num_hops: int, letters: int) -> tuple[list[list[str]], list[list[str]]]:
    names: list[str] = []
    while len(names) < num_chains * (num_hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    var_sets, chains = [], []
    for c in range(num_chains):
        vs = names[c * (num_hops + 1):(c + 1) * (num_hops + 1)]
        chain = [f"VAR {vs[0]} = {rng.randint(10000, 99999)}"]
        chain += [f"VAR {vs[j + 1]} = VAR {vs[j]}" for j in range(num_hops)]
        var_sets.append(vs)
        chains.append(chain)
    return var_sets, chains


def _vt_context(rng: random.Random, chains: list[list[str]]) -> list[tuple[float, str]]:
    items = []
    for chain in chains:
        fractions = sorted(rng.random() for _ in chain)
        items += [(f, s + "\n") for f, s in zip(fractions, chain)]
    return sorted(items, key=lambda item: item[0])


def make_vt(spec: RulerTask, ctx: RulerContext, length: int, budget: int, rng: random.Random,
              index: int = 0) -> Result:
    hops, n_chains = spec.args["num_hops"], spec.args["num_chains"]
    # one worked example first (RULER adds one): 3-letter names, a short noise context
    ex_vars, ex_chains = _chains(rng, n_chains, min(hops, 10), 3)
    ex_items = _vt_context(rng, ex_chains)
    ex_context = "".join(insert_at_fractions([NOISE + "\n"] * 3, ex_items)).strip()
    ex_query = ex_chains[0][0].split("=")[-1].strip()
    example = (TEMPLATES["vt"].format(context=ex_context, query=ex_query)
               + ANSWER_PREFIXES["vt"].format(num_v=hops + 1, query=ex_query) + " "
               + " ".join(ex_vars[0]) + "\n\n")

    var_sets, chains = _chains(rng, n_chains, hops, 5)
    query = chains[0][0].split("=")[-1].strip()
    frame = _frame(TEMPLATES["vt"], query=query)
    frame = PromptFrame(example + frame.head, frame.tail)
    prefix = ANSWER_PREFIXES["vt"].format(num_v=hops + 1, query=query)
    prefix_tokens = count_tokens(ctx.tokenizer, prefix)
    items = _vt_context(rng, chains)
    units = TokenizedUnits([NOISE + "\n"], [count_tokens(ctx.tokenizer, NOISE + "\n")])
    fit = fit_units(ctx.tokenizer, frame, units, budget - prefix_tokens,
                    insert=lambda pieces: insert_at_fractions(pieces, items),
                    fixed_tokens=_unit_tokens(ctx, [t for _, t in items]), verify=ctx.verify)
    meta = {"chains": chains, "haystack_units": fit.n_units, "verified": fit.verified}
    return fit.prompt, prefix, var_sets[0], fit.n_tokens + prefix_tokens, meta


# --------------------------------------------------------------------------- common words


def _cwe_words(ctx: RulerContext, rng: random.Random, needed: int, n_common: int = 0) -> list[str]:
    """A random order of the corpus vocabulary (its first ``n_common`` words are the answer);
    past its end, hyphenated pairs of the other words. RULER switches from the ``wonderwords``
    lists to its ``english_words.json`` (single words) when it needs more words than those hold;
    the Austen vocabulary has ~12K words, so a list past that (cwe at >= 256K) pads with pairs.
    A pair never contains an answer word, and every non-answer word is a half equally often
    (rounds over the shuffled vocabulary), so at 1M (~35K pairs over ~12.3K words) a padding word
    is inside at most 6 distinct pairs, i.e. 18 entries with ``freq_ucw`` = 3, below the 30
    standalone entries of an answer word."""
    words = list(ctx.words())
    rng.shuffle(words)
    base = words[n_common:]
    if needed > len(words) + len(base) ** 2 // 2:  # (a pair space that small would loop for ever)
        raise ValueError(f"the cwe word list needs {needed} words; the corpus vocabulary of {len(words)} "
                         f"words and its pairs cannot give that many")
    seen = set(words)
    while len(words) < needed:  # rounds in which every non-answer word is a first and a second half once
        first, second = base[:], base[:]
        rng.shuffle(first)
        rng.shuffle(second)
        for a, b in zip(first, second):
            pair = f"{a}-{b}"
            if a != b and pair not in seen:
                seen.add(pair)
                words.append(pair)
                if len(words) >= needed:
                    break
    return words[:max(needed, 0)]


def _verified(tok, n: int, text_for, cost, prefix_tokens: int, budget: int, verify: bool, lo: int,
              hi: int) -> tuple[int, int]:
    """Confirm the size chosen from the token-count formula with real tokenisations: step down
    while the prompt is over budget, then up while the next size still fits (usually one or
    two tokenisations: the formula is exact up to a seam token)."""
    if not verify:
        return n, cost(n)

    def actual(k: int) -> int:
        return count_tokens(tok, text_for(k)) + prefix_tokens

    current = actual(n)
    if current == cost(n):
        return n, current  # the formula is exact here, so n + 1 is over budget as it says
    while current > budget and n > lo:
        n -= 1
        current = actual(n)
    while n < hi:
        bigger = actual(n + 1)
        if bigger > budget:
            break
        n, current = n + 1, bigger
    return n, current


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def make_cwe(spec: RulerTask, ctx: RulerContext, length: int, budget: int, rng: random.Random,
              index: int = 0) -> Result:
    num_cw = spec.args["num_cw"]
    short = length < 4096  # RULER uses fewer repeats below 4K
    freq_cw, freq_ucw = (6, 1) if short else (spec.args["freq_cw"], spec.args["freq_ucw"])
    ex_n, ex_cw, ex_ucw = (20, 3, 1) if short else (40, 10, 3)
    tok = ctx.tokenizer

    ex_words = _cwe_words(ctx, rng, ex_n)
    ex_list = ex_words[:num_cw] * ex_cw + ex_words[num_cw:] * ex_ucw
    rng.shuffle(ex_list)
    example = (TEMPLATES["cwe"].format(context=_numbered(ex_list), num_cw=num_cw)
               + ANSWER_PREFIXES["cwe"].format(num_cw=num_cw) + " " + _numbered(ex_words[:num_cw]) + "\n")
    frame = _frame(TEMPLATES["cwe"], num_cw=num_cw)
    frame = PromptFrame(example + frame.head, frame.tail)
    prefix = ANSWER_PREFIXES["cwe"].format(num_cw=num_cw)
    fixed = (count_tokens(tok, frame.head) + count_tokens(tok, frame.tail) + count_tokens(tok, prefix)
             + seam_delta(tok, frame.head, "1. word") + seam_delta(tok, " word", frame.tail)
             + count_tokens(tok, "1.") - count_tokens(tok, " 1."))  # the first entry has no space

    # an upper bound on the number of words: every entry costs at least its number and one token
    # how many words can fit: from the mean tokens of an entry (a 10% margin; past it the search
    # stops at n_max and the sample is a little short, which the tests would show)
    probe = _cwe_words(ctx, random.Random(rng.random()), 256)
    mean_word = count_tokens(tok, "".join(" " + w for w in probe)) / len(probe)
    digits = len(str(max((budget - fixed) // 4, 1)))
    mean_entry = mean_word + count_tokens(tok, " " + "7" * digits + ".")
    n_max = max(num_cw + 1, int((budget - fixed) / (mean_entry * freq_ucw) * 1.1) + num_cw + 16)
    words = _cwe_words(ctx, rng, n_max, num_cw)
    n_entries = lambda n: num_cw * freq_cw + max(n - num_cw, 0) * freq_ucw  # noqa: E731
    order = np.random.default_rng(rng.getrandbits(32))
    order_seed = int(order.integers(2 ** 31))
    texts: dict[int, tuple[str, list[str]]] = {}

    def text_for(n: int) -> tuple[str, list[str]]:
        if n not in texts:
            chosen = np.array(words[:n], dtype=object)
            index = np.concatenate((np.repeat(np.arange(min(n, num_cw)), freq_cw),
                                    np.repeat(np.arange(num_cw, max(n, num_cw)), freq_ucw)))
            entries = chosen[np.random.default_rng(order_seed).permutation(index)]
            texts[n] = frame.head + _numbered(entries) + frame.tail, words[:num_cw]
        return texts[n]

    prefix_tokens = count_tokens(tok, prefix)
    if haystack.SIZING == "naive":
        def cost(n: int) -> int:
            return count_tokens(tok, text_for(n)[0]) + prefix_tokens
    else:  # token counts of words and of entry numbers, each tokenised once
        word_tokens = np.concatenate(([0], np.cumsum(tokenize_units(tok, [" " + w for w in words]).lengths)))
        numbers = tokenize_units(tok, [f" {i}." for i in range(1, n_entries(n_max) + 1)],
                                 ctx._units_cache(), "numbers")
        number_cum = np.concatenate(([0], np.cumsum(numbers.lengths)))

        def cost(n: int) -> int:
            common = int(word_tokens[min(n, num_cw)]) * freq_cw
            rare = (int(word_tokens[n]) - int(word_tokens[num_cw])) * freq_ucw if n > num_cw else 0
            return fixed + int(number_cum[n_entries(n)]) + common + rare

    n = largest_fitting(cost, num_cw, n_max, budget)
    n, n_tokens = _verified(tok, n, lambda k: text_for(k)[0], cost, prefix_tokens, budget, ctx.verify, num_cw, n_max)
    prompt, answer = text_for(n)
    meta = {"num_words": n, "pair_words": sum("-" in w for w in words[:n]), "freq_cw": freq_cw,
            "freq_ucw": freq_ucw, "verified": ctx.verify}
    return prompt, prefix, answer, n_tokens, meta


# --------------------------------------------------------------------------- frequent words


def zeta(alpha: float, terms: int = 1000) -> float:
    """Riemann zeta for alpha > 1 (Euler-Maclaurin tail; avoids a scipy dependency)."""
    k = np.arange(1, terms + 1, dtype=np.float64)
    n = float(terms)
    return float(np.sum(k ** -alpha) + n ** (1 - alpha) / (alpha - 1) - n ** -alpha / 2
                 + alpha * n ** (-alpha - 1) / 12)


def make_fwe(spec: RulerTask, ctx: RulerContext, length: int, budget: int, rng: random.Random,
              index: int = 0) -> Result:
    alpha, wordlen = spec.args["alpha"], spec.args["coded_wordlen"]
    tok = ctx.tokenizer
    # RULER's default vocabulary: (max_seq_length - tokens_to_generate) // 50
    # (freq_words_extraction.py subtracts the generation budget first)
    vocab_size = max((length - spec.tokens_to_generate) // 50, 10)
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=wordlen)))
    words = sorted(vocab)
    rng.shuffle(words)
    words[0] = "..."  # the most frequent "word" is noise, as in RULER
    share = np.arange(1, vocab_size + 1, dtype=np.float64) ** -alpha / zeta(alpha)
    frame = _frame(TEMPLATES["fwe"])
    head = frame.head.rstrip(" ")  # words carry their leading space
    prefix = ANSWER_PREFIXES["fwe"]
    fixed = (count_tokens(tok, head) + count_tokens(tok, frame.tail) + count_tokens(tok, prefix)
             + seam_delta(tok, " word", frame.tail))

    def counts(n: int) -> np.ndarray:
        return (n * share).astype(np.int64)

    order_seed = rng.getrandbits(32)

    word_array = np.array(words, dtype=object)
    texts: dict[int, str] = {}

    def text_for(n: int) -> str:
        if n not in texts:
            index = np.repeat(np.arange(vocab_size), counts(n))
            sampled = word_array[np.random.default_rng(order_seed).permutation(index)]
            texts[n] = head + "".join(" " + w for w in sampled) + frame.tail
        return texts[n]

    prefix_tokens = count_tokens(tok, prefix)
    if haystack.SIZING == "naive":
        def cost(n: int) -> int:
            return count_tokens(tok, text_for(n)) + prefix_tokens
    else:
        word_tokens = tokenize_units(tok, [" " + w for w in words]).lengths

        def cost(n: int) -> int:
            return fixed + int(counts(n) @ word_tokens)

    n = largest_fitting(cost, 0, max(budget, 1) * 4, budget)
    n, n_tokens = _verified(tok, n, text_for, cost, prefix_tokens, budget, ctx.verify, 0, max(budget, 1) * 4)
    prompt = text_for(n)
    meta = {"num_words": n, "vocab_size": vocab_size, "alpha": alpha, "verified": ctx.verify}
    return prompt, prefix, words[1:4], n_tokens, meta
