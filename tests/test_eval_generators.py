"""Generators: needles exactly where required, lengths within stated tolerances under the
tokenizer, the same samples for the same seed, and the fast sizing equal to the naive search."""

from __future__ import annotations

import ast
import re
from collections import Counter

import pytest
from test_eval_fixtures import corpus_dir, hotpot_rows, prose, squad_rows, tiny_hf_model, write_jsonl

from longctx.eval.haystack import (PromptFrame, TokenizedUnits, count_tokens, essay_units, fit_units,
                                   naive_fit, split_sentences)
from longctx.eval.infinitebench import IB_SYNTHETIC, prepare_infinitebench_synthetic
from longctx.eval.ruler import RULER_TASKS, RulerContext, prepare_ruler
from longctx.core.tokenizer import load_tokenizer

# Largest allowed gap (budget - tokens) per task: the haystack granularity. Prose and noise
# haystacks are filled word by word; needle haystacks, word lists and documents by whole units.
TOLERANCE = {"niah_multikey_2": 40, "niah_multikey_3": 70, "cwe": 24, "fwe": 16, "qa_1": 400, "qa_2": 400}
DEFAULT_TOLERANCE = 3


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("llama3")


@pytest.fixture(scope="module")
def ctx(tok, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    return RulerContext(tok, haystack_corpus=str(corpus_dir(tmp)), cache_dir=tmp / "cache",
                        squad_path=str(write_jsonl(tmp / "squad.jsonl", squad_rows())),
                        hotpotqa_path=str(write_jsonl(tmp / "hotpot.jsonl", hotpot_rows())))


def _actual(tok, sample) -> int:
    return count_tokens(tok, sample.prompt) + count_tokens(tok, sample.answer_prefix)


@pytest.mark.parametrize("task", list(RULER_TASKS))
@pytest.mark.parametrize("length", [1024, 8192])
def test_ruler_lengths_within_tolerance(task, length, ctx, tok):
    budget = length - RULER_TASKS[task].tokens_to_generate - 40
    samples = prepare_ruler(task, length, budget, 2, 0, ctx)
    for s in samples:
        actual = _actual(tok, s)
        assert s.n_tokens == actual, "recorded length must be the tokenizer's count"
        assert actual <= budget
        assert budget - actual <= TOLERANCE.get(task, DEFAULT_TOLERANCE), (task, budget, actual)


def test_niah_needles_present_at_their_depths(ctx, tok):
    for task in ("niah_single_2", "niah_multikey_1", "niah_multivalue", "niah_multiquery"):
        for s in prepare_ruler(task, 8192, 8000, 3, 1, ctx):
            context = s.prompt
            for needle, depth in zip(sorted(s.meta["needles"], key=context.find), s.meta["depth_fractions"]):
                assert context.count(needle) == 1
                # position of the needle inside the haystack relative to its size ~ its depth
                start = context.index("\n") + 1
                end = context.rindex("\n")
                rel = (context.index(needle) - start) / (end - start)
                assert abs(rel - depth) < 0.03, (task, depth, rel)
            for value in s.references:
                assert value in context and f"is: {value}." in context
            asked = s.answer_prefix.split(" for ")[1].split(" in the text")[0]
            for key in re.split(r", and |, ", asked):
                assert f"for {key} is:" in context


def test_needle_haystack_is_only_needles(ctx):
    s = prepare_ruler("niah_multikey_3", 4096, 3900, 1, 0, ctx)[0]
    lines = s.prompt.split("\n")[1:-1]
    assert all(line.startswith("One special magic uuid for ") for line in lines)
    assert sum(s.references[0] in line for line in lines) == 1


def test_vt_chain_in_order_and_answer(ctx):
    s = prepare_ruler("vt", 4096, 4000, 1, 0, ctx)[0]
    body = s.prompt.split("\n\n", 1)[1]  # after the worked example
    chain = s.meta["chains"][0]
    positions = [body.index(stmt) for stmt in chain]
    assert positions == sorted(positions)
    assert s.references == [stmt.split()[1] for stmt in chain]
    assert chain[0].split("= ")[1] in s.answer_prefix


def test_cwe_frequencies(ctx):
    s = prepare_ruler("cwe", 8192, 8000, 1, 0, ctx)[0]
    listing = s.prompt.split("\n")[-2]  # the numbered list of the real question
    words = re.findall(r"\d+\. (\S+)", listing)
    counts = Counter(words)
    assert all(counts[w] == 30 for w in s.references)
    assert set(counts.values()) == {30, 3}


def test_fwe_top_words(ctx):
    s = prepare_ruler("fwe", 8192, 8000, 1, 0, ctx)[0]
    coded = s.prompt.split("coded words. ")[1].split("\nQuestion")[0].split()
    ranked = [w for w, _ in Counter(coded).most_common()]
    assert ranked[0] == "..."
    assert ranked[1:4] == s.references


def test_qa_gold_paragraph_present(ctx):
    for task in ("qa_1", "qa_2"):
        s = prepare_ruler(task, 1024, 900, 2, 0, ctx)[1]
        assert s.meta["gold_positions"]
        assert any(ref in s.prompt for ref in s.references)
        assert f"Document {s.meta['gold_positions'][0]}:" in s.prompt


def _ruler_pool(task: str) -> list[str]:
    """RULER's document list, read from the fixture rows the way ``qa.py`` reads SQuAD / HotpotQA:
    every distinct paragraph (HotpotQA: ``title\\nsentences``), sorted."""
    if task == "qa_1":
        return sorted({r["context"] for r in squad_rows()})
    return sorted({f"{t}\n{''.join(p)}" for r in hotpot_rows()
                   for t, p in zip(r["context"]["title"], r["context"]["sentences"])})


@pytest.mark.parametrize("task", ["qa_1", "qa_2"])
def test_qa_past_the_pool_repeats_the_document_list_like_ruler(task, ctx, tok):
    """The fixture pools hold ~1-2K tokens; at 16K RULER fills the length with
    ``(DOCS * repeats)[:num_docs]`` and shuffles: every document once per full pass, then the
    first documents of the sorted list once more. The sample must be that multiset, numbered
    1..n, and as long as the budget allows."""
    length = 16384
    budget = length - RULER_TASKS[task].tokens_to_generate - 40
    pool = _ruler_pool(task)
    for s in prepare_ruler(task, length, budget, 2, 0, ctx):
        context = s.prompt.split("Documents:\n\n", 1)[1].rsplit("\n\nAnswer the question", 1)[0]
        parts = re.split(r"(?:^|\n\n)Document (\d+):\n", context)
        numbers, documents = [int(x) for x in parts[1::2]], parts[2::2]
        n = len(documents)
        assert numbers == list(range(1, n + 1)) and parts[0] == ""
        assert n > 2 * len(pool), "a 16K sample must go through the pool more than twice"
        assert Counter(documents) == Counter((pool * (n // len(pool) + 1))[:n])
        assert budget - _actual(tok, s) <= TOLERANCE[task]
        assert any(ref in s.prompt for ref in s.references)


def test_deterministic_with_seed_and_cached(ctx, tok, tmp_path):
    fresh = RulerContext(tok, haystack_corpus=ctx.haystack_corpus, cache_dir=None)
    for task in ("niah_single_3", "vt", "cwe", "fwe", "niah_multikey_2"):
        a = prepare_ruler(task, 2048, 1900, 2, 5, fresh)
        b = prepare_ruler(task, 2048, 1900, 2, 5, fresh)
        c = prepare_ruler(task, 2048, 1900, 2, 6, fresh)
        assert [s.prompt for s in a] == [s.prompt for s in b]
        assert [s.prompt for s in a] != [s.prompt for s in c]
    cached = RulerContext(tok, haystack_corpus=ctx.haystack_corpus, cache_dir=tmp_path)
    first = prepare_ruler("niah_single_2", 2048, 1900, 2, 5, cached)
    files = list((tmp_path / "ruler").glob("niah_single_2-L2048-B1900-llama3-seed5-n2-*.jsonl"))
    assert len(files) == 1
    assert [s.prompt for s in prepare_ruler("niah_single_2", 2048, 1900, 2, 5, cached)] == [s.prompt for s in first]


def test_fast_fit_equals_naive_binary_search(tok):
    text = prose(3000, 3)
    units = essay_units(tok, text)
    frame = PromptFrame("Read this.\n", "\nWhat was it?")
    needle = " One special magic number for x is: 1234567."
    insert = lambda pieces: pieces[: len(pieces) // 2] + [needle] + pieces[len(pieces) // 2:]  # noqa: E731

    def build(n: int) -> str:
        return frame.head + "".join(insert(units.take(n))).strip() + frame.tail

    for budget in (300, 5000, 40000):  # 40000 wraps around the corpus
        fast = fit_units(tok, frame, units, budget, insert=insert, fixed_tokens=count_tokens(tok, needle),
                         fill_remainder=False)
        n, prompt, tokens = naive_fit(tok, build, budget, upper=budget)
        assert (fast.n_units, fast.prompt, fast.n_tokens) == (n, prompt, tokens)
        filled = fit_units(tok, frame, units, budget, insert=insert, fixed_tokens=count_tokens(tok, needle))
        assert budget - 2 <= filled.n_tokens <= budget


def test_units_are_additive_for_an_hf_tokenizer(tmp_path):
    from longctx.core.tokenizer import HFTokenizer

    text = prose(800, 4)
    hf = HFTokenizer(str(tiny_hf_model(tmp_path, text)))
    units = essay_units(hf, text)
    per_unit = [len(hf.encode(t)) for t in units.texts]
    assert list(units.lengths) == per_unit
    frame = PromptFrame("Head.\n", "\nTail?")
    for budget in (200, 2000):
        fit = fit_units(hf, frame, units, budget)
        assert fit.n_tokens == count_tokens(hf, fit.prompt) and budget - 3 <= fit.n_tokens <= budget


def test_sentence_split_and_wraparound():
    assert split_sentences("One. Two!  \"Three?\" Four") == ["One.", "Two!", "\"Three?\"", "Four"]
    units = TokenizedUnits(["a", "b", "c"], [2, 3, 5])
    assert units.tokens_of_first(4) == 12 and units.max_units_within(12) == 4
    assert units.take(4) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("task", IB_SYNTHETIC)
def test_infinitebench_synthetic(task, tok):
    length = 4096
    samples = prepare_infinitebench_synthetic(task, length, lambda m: length - m - 40, 3, 0, tok)
    for s in samples:
        budget = length - s.max_new_tokens - 40
        actual = _actual(tok, s)
        assert s.n_tokens == actual <= budget
        assert budget - actual <= (60 if task == "kv_retrieval" else 20), (task, budget, actual)
        answer = s.references[0]
        if task in ("passkey", "number_string"):
            assert s.prompt.count(f"is {answer}. Remember it.") == 1
            rel = s.prompt.index(answer) / len(s.prompt)
            assert abs(rel - s.meta["depth"]) < 0.06
        elif task == "kv_retrieval":
            assert s.prompt.count(f'": "{answer}"') == 1
            key = s.prompt.split('Key: "')[1].split('"')[0]
            assert f'"{key}": "{answer}"' in s.prompt
        elif task == "math_find":  # official semantics in test_eval_infinitebench_synth.py
            numbers = ast.literal_eval(s.prompt.split("\n\n")[1])
            assert s.meta["count"] == len(numbers) and f"the {s.meta['target']} number" in s.prompt
        elif task == "math_calc":
            expr = s.prompt.split("\n\n")[1]
            values, total = [], int(expr.split()[0])
            for sign, operand in zip(expr.split()[1::2], expr.split()[2::2]):
                total = total + int(operand) if sign == "+" else total - int(operand)
                values.append(total)
            assert answer == values and 0 <= min(values) and max(values) <= 99
        elif task == "code_run":
            code = s.prompt.split("\n\n", 1)[1].rsplit("\n\nWhat exactly", 1)[0]
            namespace: dict = {}
            exec(code, namespace)  # the generated functions, evaluated by Python itself
            call = s.prompt.split("What exactly does ")[1].split(" return")[0]
            assert eval(call, namespace) == answer


@pytest.mark.parametrize("task", list(RULER_TASKS))
def test_naive_sizing_gives_the_same_samples(task, ctx, monkeypatch):
    """The reference way (build + tokenise the whole prompt at every size tried) and the prefix
    sums choose the same haystack: identical prompts and lengths."""
    from longctx.eval import haystack

    budget = 3000 - RULER_TASKS[task].tokens_to_generate
    fast_ctx = RulerContext(ctx.tokenizer, ctx.haystack_corpus, None, True, ctx.squad_path, ctx.hotpotqa_path)
    fast = prepare_ruler(task, 3000, budget, 2, 3, fast_ctx)
    monkeypatch.setattr(haystack, "SIZING", "naive")
    naive_ctx = RulerContext(ctx.tokenizer, ctx.haystack_corpus, None, True, ctx.squad_path, ctx.hotpotqa_path)
    naive = prepare_ruler(task, 3000, budget, 2, 3, naive_ctx)
    assert [(s.prompt, s.n_tokens) for s in fast] == [(s.prompt, s.n_tokens) for s in naive]
