"""RULER inputs against RULER's own procedures (NVIDIA/RULER ``scripts/data/synthetic``),
re-implemented here from a reading of the official code, on the same document pool."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from test_eval_fixtures import corpus_dir, hotpot_rows, prose, squad_rows, write_jsonl

from longctx.core.tokenizer import load_tokenizer
from longctx.eval.ruler import RULER_TASKS, RulerContext, prepare_ruler
from longctx.eval.ruler_qa import qa_from_hotpotqa, qa_from_squad

RULER_SEED = 42  # scripts/data/prepare.py: --random_seed default


def ruler_qa_documents(gold: list[int], more: list[int], num_docs: int, pool: int, seed: int = RULER_SEED,
                       draw: random.Random | None = None) -> list[int]:
    """The oracle: RULER ``qa.py`` ``generate_input_output``'s document list for one sample.
    Below the pool size: gold, then the same article's paragraphs, then random others; from it on,
    the sorted pool repeated and cut to ``num_docs``. Then ``random.Random(seed).shuffle``."""
    draw = draw or random.Random(0)
    if num_docs < pool:
        if num_docs - len(gold) > len(more):
            addition = [i for i in range(pool) if i not in gold + more]
            docs = gold + more + draw.sample(addition, max(0, num_docs - len(gold) - len(more)))
        else:
            docs = gold + draw.sample(more, num_docs - len(gold))
    else:
        repeats = (num_docs + pool - 1) // pool
        docs = (list(range(pool)) * repeats)[:num_docs]
    random.Random(seed).shuffle(docs)
    return docs


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("llama3")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fidelity")
    return dict(haystack_corpus=str(corpus_dir(tmp)), squad_path=str(write_jsonl(tmp / "squad.jsonl", squad_rows())),
                hotpotqa_path=str(write_jsonl(tmp / "hotpot.jsonl", hotpot_rows())))


def _documents(prompt: str) -> list[str]:
    context = prompt.split("Documents:\n\n", 1)[1].rsplit("\n\nAnswer the question", 1)[0]
    parts = re.split(r"(?:^|\n\n)Document (\d+):\n", context)
    assert [int(x) for x in parts[1::2]] == list(range(1, len(parts[1::2]) + 1))
    return parts[2::2]


def _pool(task):
    qas, docs = (qa_from_squad(squad_rows()) if task == "qa_1" else qa_from_hotpotqa(hotpot_rows()))
    return qas, docs


@pytest.mark.parametrize("task", ["qa_1", "qa_2"])
@pytest.mark.parametrize("length", [700, 1024, 4096])
def test_qa_gold_depth_is_rulers_seeded_shuffle(task, length, tok, paths):
    """Every sample's gold paragraphs sit where RULER's fixed-seed shuffle of a list of that many
    documents puts them (read from the prompt text, not from meta); past the pool the whole
    document sequence is RULER's. Below the pool, samples with the same document count share one
    gold depth,
    and no sample has more documents than sample 0 (RULER sizes on sample 0 and only shrinks)."""
    ctx = RulerContext(tok, **paths)
    qas, pool = _pool(task)
    budget = length - RULER_TASKS[task].tokens_to_generate - 40
    samples = prepare_ruler(task, length, budget, 5, 0, ctx)
    depths: dict[int, set] = {}
    for s in samples:
        docs = _documents(s.prompt)
        n = len(docs)
        assert n == s.meta["n_documents"] and s.meta["doc_order"] == "fixed (seed 42)"
        qa = qas[s.index % len(qas)]
        oracle = ruler_qa_documents(qa["context"], qa["more"], n, len(pool))
        gold = set(qa["context"])
        want = [i + 1 for i, d in enumerate(oracle) if d in gold]
        got = [i + 1 for i, text in enumerate(docs) if pool.index(text) in gold]
        assert got == want == s.meta["gold_positions"], (s.index, n)
        if n >= len(pool):
            assert docs == [pool[d] for d in oracle]
        else:
            assert Counter(pool.index(t) for t in docs)[qa["context"][0]] == 1
        if n < len(pool):  # past the pool the gold copies sit where the sorted list puts them (RULER too)
            depths.setdefault(n, set()).add(tuple(want))
        assert n <= samples[0].meta["n_documents"]
    assert all(len(v) == 1 for v in depths.values()), depths


def test_qa_per_sample_order_is_an_option(tok, paths):
    ctx = RulerContext(tok, qa_doc_order="per_sample", **paths)
    qas, pool = _pool("qa_1")
    samples = prepare_ruler("qa_1", 1024, 950, 6, 0, ctx)
    positions = set()
    for s in samples:
        docs = _documents(s.prompt)
        gold = qas[s.index % len(qas)]["context"][0]
        assert s.meta["doc_order"] == "per_sample"
        assert [i + 1 for i, t in enumerate(docs) if t == pool[gold]] == s.meta["gold_positions"]
        positions.add(s.meta["gold_depths"][0])
    assert len(positions) > 1  # the gold paragraph moves from sample to sample
    with pytest.raises(ValueError, match="unknown qa document order"):
        prepare_ruler("qa_1", 1024, 950, 1, 0, RulerContext(tok, qa_doc_order="sorted", **paths))


def test_cwe_padding_pairs_never_hold_an_answer_word(tok):
    """Past the Austen vocabulary (~12.3K words; cwe at >= 256K) the list pads with hyphenated
    pairs. An answer word must occur exactly in its 30 standalone entries, nowhere inside a pair,
    and no padding word may come near 30 occurrences (RULER's padding is single words)."""
    ctx = RulerContext(tok)  # the packaged Austen corpus
    length = 262144
    s = prepare_ruler("cwe", length, length - RULER_TASKS["cwe"].tokens_to_generate - 64, 1, 0, ctx)[0]
    entries = re.findall(r"\d+\. (\S+)", s.prompt.split("\n")[-2])  # the real question's list
    pairs = [e for e in entries if "-" in e]
    assert s.meta["pair_words"] > 1000 and len(pairs) == 3 * s.meta["pair_words"]
    inside = Counter(half for e in pairs for half in e.split("-"))
    standalone = Counter(e for e in entries if "-" not in e)
    assert {w: inside[w] for w in s.references} == {w: 0 for w in s.references}
    assert all(standalone[w] == 30 for w in s.references)
    assert max(inside[w] + standalone[w] for w in inside) < 30


def test_fwe_vocabulary_is_rulers_size(tok, paths):
    """freq_words_extraction.py: vocab_size = (max_seq_length - tokens_to_generate) // 50."""
    ctx = RulerContext(tok, **paths)
    for length in (4096, 8192):
        s = prepare_ruler("fwe", length, length - 50 - 40, 1, 0, ctx)[0]
        assert s.meta["vocab_size"] == (length - RULER_TASKS["fwe"].tokens_to_generate) // 50


def test_qa_document_count_is_sized_on_sample_0_like_ruler(tok, tmp_path):
    """Paragraphs of very different lengths: filling each sample on its own would give samples
    more documents than sample 0 (and other gold depths); RULER's protocol sizes on sample 0 and
    only ever removes documents from a sample that overflows."""
    rows = []
    for a in range(12):
        for p in range(3):
            context = prose(2 + 5 * ((a + p) % 4), 300 + 10 * a + p) + f" The {a}-{p} keeper was Mr Knight{a}{p}."
            rows.append({"id": f"q{a}{p}", "title": f"Article{a}", "context": context,
                         "question": f"Who kept the {a}-{p} gate?",
                         "answers": {"text": [f"Mr Knight{a}{p}"], "answer_start": [len(context) - 14]}})
    ctx = RulerContext(tok, squad_path=str(write_jsonl(tmp_path / "squad.jsonl", rows)))
    samples = prepare_ruler("qa_1", 3072, 2974, 8, 0, ctx)
    counts = [s.meta["n_documents"] for s in samples]
    assert counts[0] < len({r["context"] for r in rows})  # below the pool size
    assert max(counts) == counts[0] and len(set(counts)) > 1, counts  # some samples had to drop documents
    first = random.Random(RULER_SEED)
    order = list(range(counts[0]))
    first.shuffle(order)
    for s in samples:
        if s.meta["n_documents"] == counts[0]:
            assert s.meta["gold_positions"] == [order.index(0) + 1]
    free = prepare_ruler("qa_1", 3072, 2974, 8, 0, RulerContext(tok, qa_doc_order="per_sample",
                                                                 squad_path=ctx.squad_path))
    assert max(s.meta["n_documents"] for s in free) > counts[0]  # what filling each sample would do
