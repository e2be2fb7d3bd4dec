"""RULER's QA tasks: a real question, its gold paragraphs, and distractor paragraphs up to the length.

qa_1 reads SQuAD v2 (``rajpurkar/squad_v2``, validation; answerable questions only) and qa_2
HotpotQA (``hotpotqa/hotpot_qa``, ``distractor``, validation), both through ``datasets``
(:func:`longctx.eval.hub.load_rows`; a local file with the same columns works offline). As in
RULER, the documents are all distinct paragraphs of the split; a sample holds its gold
paragraphs, then paragraphs of the same article (SQuAD), then random others, shuffled and
numbered ``Document i:``. Sample ``i`` asks question ``i`` at every length. The shuffle is
RULER's by default: one fixed seed for every sample, so below the pool size the gold paragraph
sits at the same depth in every sample of a length (``qa_doc_order``; see :func:`make_qa`).

Long lengths: when the split's paragraphs are all used and the budget is not reached, RULER
repeats the whole document list to fill it (``scripts/data/synthetic/qa.py``: ``(DOCS * repeats)
[:num_docs]``), so a 1M sample is really 1M tokens however small the pool. Here too: after every
paragraph once (gold, same-article, random others), further documents are further copies of the
sorted document list, in its order; the chosen documents are then shuffled (``fixed`` order: the
list is RULER's own ``(DOCS * repeats)[:num_docs]``). The multiset of documents is RULER's, and ``meta["pool_passes"]`` says how many times the pool was gone through.

Sizing: paragraph token counts are computed once per (dataset, tokenizer) and cached; a sample's
token count is a sum over its paragraphs and numbered headers, so the number of distractors is
found by binary search over prefix sums and the text is built once.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from . import haystack
from .haystack import TokenizedUnits, count_tokens, largest_fitting, tokenize_units
from .hub import load_rows
from .ruler_spec import ANSWER_PREFIXES, TEMPLATES, RulerContext, RulerTask

__all__ = ["make_qa", "qa_from_squad", "qa_from_hotpotqa", "SOURCES", "QA_ORDERS", "ruler_doc_order"]

SOURCES = {  # dataset -> (hub id, config, split)
    "squad": ("rajpurkar/squad_v2", None, "validation"),
    "hotpotqa": ("hotpotqa/hotpot_qa", "distractor", "validation"),
}
_LOADED: dict[tuple[str, str, str, str], tuple[list[dict], list[str], TokenizedUnits]] = {}


def qa_from_squad(rows: list[dict[str, Any]]) -> tuple[list[dict], list[str]]:
    """SQuAD rows -> (questions, documents). Unanswerable questions are dropped; ``more`` lists
    the other paragraphs of the same article (preferred distractors, as RULER)."""
    docs = sorted({r["context"] for r in rows})
    index = {d: i for i, d in enumerate(docs)}
    by_title: dict[str, list[int]] = {}
    for r in rows:
        ids = by_title.setdefault(r["title"], [])
        if index[r["context"]] not in ids:
            ids.append(index[r["context"]])
    qas = []
    for r in rows:
        answers = list(r["answers"]["text"])
        if not answers:
            continue
        gold = index[r["context"]]
        qas.append({"query": r["question"], "outputs": answers, "context": [gold],
                    "more": [i for i in by_title[r["title"]] if i != gold]})
    return qas, docs


def qa_from_hotpotqa(rows: list[dict[str, Any]]) -> tuple[list[dict], list[str]]:
    """HotpotQA (distractor) rows -> (questions, documents); a document is ``title\\ntext``."""
    def paragraphs(r):
        ctx = r["context"]
        return [f"{t}\n{''.join(s)}" for t, s in zip(ctx["title"], ctx["sentences"])]

    docs = sorted({p for r in rows for p in paragraphs(r)})
    index = {d: i for i, d in enumerate(docs)}
    qas = [{"query": r["question"], "outputs": [r["answer"]],
            "context": [index[p] for p in paragraphs(r)], "more": []} for r in rows]
    return qas, docs


def _load(ctx: RulerContext, dataset: str) -> tuple[list[dict], list[str], TokenizedUnits]:
    local = ctx.squad_path if dataset == "squad" else ctx.hotpotqa_path
    key = (dataset, local, ctx.tokenizer.name, haystack.SIZING)
    if key not in _LOADED:
        hub_id, config, split = SOURCES[dataset]
        rows = load_rows(hub_id, config, split, local_path=local or None)  # raises Unavailable
        qas, docs = (qa_from_squad if dataset == "squad" else qa_from_hotpotqa)(rows)
        units = tokenize_units(ctx.tokenizer, [d + "\n\n" for d in docs], ctx._units_cache(), f"qa-{dataset}")
        _LOADED[key] = (qas, docs, units)
    return _LOADED[key]


QA_ORDERS = ("fixed", "per_sample")


def ruler_doc_order(chosen: list[int], seed: int) -> list[int]:
    """RULER's order of a sample's documents (``qa.py``: ``random.Random(args.random_seed)
    .shuffle(all_docs)``): one seeded shuffle, so the permutation depends only on how many
    documents there are, and the gold paragraphs, listed first, land at the same places in every
    sample with that many documents."""
    order = list(chosen)
    random.Random(seed).shuffle(order)
    return order


def make_qa(spec: RulerTask, ctx: RulerContext, length: int, budget: int, rng: random.Random,
            index: int) -> tuple[str, str, list[str], int, dict[str, Any]]:
    """One qa sample. Document order (``ctx.qa_doc_order``):

    * ``fixed`` (default, RULER's protocol): the number of documents is sized on sample 0 of the
      length (RULER's binary search on sample 0); every later sample keeps it and drops one
      document at a time only while it is over budget (RULER drops 10 at a time). The chosen
      list -- gold paragraphs first, then distractors; from the pool size on, the sorted pool
      repeated, ``(DOCS * repeats)[:num_docs]`` -- is shuffled with ``random.Random(
      ctx.qa_order_seed)``: below the pool size the gold depth is one value per (length,
      document count).
    * ``per_sample``: every sample filled to its own budget and shuffled with its own seed: the
      score is then a mean over gold depths.

    ``meta`` records the order, the gold positions and depths, and the document count."""
    if ctx.qa_doc_order not in QA_ORDERS:
        raise ValueError(f"unknown qa document order {ctx.qa_doc_order!r}; valid: {', '.join(QA_ORDERS)}")
    fixed = ctx.qa_doc_order == "fixed"
    qas, docs, units = _load(ctx, spec.args["dataset"])
    tok = ctx.tokenizer
    qa = qas[index % len(qas)]
    gold = list(qa["context"])
    more = list(qa["more"])
    rng.shuffle(more)
    taken = set(gold) | set(more)
    others = [int(i) for i in np.random.default_rng(rng.getrandbits(32)).permutation(len(docs)) if int(i) not in taken]
    # at most this many documents fit: each costs its paragraph plus a header of >= 2 tokens
    n_max = len(gold) + budget // (int(units.lengths.min()) + 2) + 1
    # past one pass over the pool (gold + more + others), RULER's fill: copies of the document list
    refill = max(n_max - len(docs), 0)
    distractors = (more + others + np.tile(np.arange(len(docs)), -(-refill // len(docs)))[:refill].tolist()
                   )[:max(n_max - len(gold), 0)]

    head, tail = TEMPLATES["qa"].format(context="\x00", query=qa["query"]).split("\x00")
    prefix = ANSWER_PREFIXES["qa"]
    fixed_tokens = count_tokens(tok, head) + count_tokens(tok, tail) + count_tokens(tok, prefix)
    gold_tokens = int(units.lengths[gold].sum())
    distractor_cum = np.concatenate(([0], np.cumsum(units.lengths[distractors])))
    n_header = len(gold) + len(distractors)
    headers = tokenize_units(tok, [f"Document {i}:\n" for i in range(1, n_header + 1)],
                             ctx._units_cache(), "doc-headers")
    header_cum = np.concatenate(([0], np.cumsum(headers.lengths)))

    order_seed = rng.random()

    def chosen_for(n: int) -> list[int]:
        total = len(gold) + n
        if fixed:
            # qa.py: below the pool size, gold + distractors; from it on, the sorted pool repeated
            # (the same multiset as gold + distractors here, so the token count is the same)
            chosen = gold + distractors[:n] if total < len(docs) else \
                np.tile(np.arange(len(docs)), -(-total // len(docs)))[:total].tolist()
            return ruler_doc_order(chosen, ctx.qa_order_seed)
        chosen = gold + distractors[:n]
        random.Random(order_seed).shuffle(chosen)
        return chosen

    def text_for(n: int) -> tuple[str, list[int]]:
        chosen = chosen_for(n)
        context = "".join(f"Document {i + 1}:\n{docs[d]}\n\n" for i, d in enumerate(chosen)).strip()
        return head + context + tail, chosen

    prefix_tokens = count_tokens(tok, prefix)
    if haystack.SIZING == "naive":
        def cost(n: int) -> int:
            return count_tokens(tok, text_for(n)[0]) + prefix_tokens
    else:
        def cost(n: int) -> int:
            return fixed_tokens + gold_tokens + int(distractor_cum[n]) + int(header_cum[min(len(gold) + n, n_header)])

    hi = min(len(distractors), n_header - len(gold))
    key = (spec.args["dataset"], length, budget)
    if fixed and index > 0 and key in ctx._qa_sizes:  # sample 0's count, less while over budget
        n = min(max(ctx._qa_sizes[key] - len(gold), 0), hi)
        while n > 0 and cost(n) > budget:
            n -= 1
    else:
        n = largest_fitting(cost, 0, hi, budget)
    while True:
        prompt, chosen = text_for(n)
        n_tokens = (count_tokens(tok, prompt) + prefix_tokens) if ctx.verify else cost(n)
        if n_tokens <= budget or n == 0:
            break
        n -= 1
    if fixed and (index == 0 or key not in ctx._qa_sizes):
        ctx._qa_sizes[key] = len(chosen)
    gold_set = set(gold)
    positions = [i + 1 for i, d in enumerate(chosen) if d in gold_set]  # every copy past the pool
    meta = {"dataset": spec.args["dataset"], "n_documents": len(chosen), "pool_documents": len(docs),
            "pool_passes": round(len(chosen) / len(docs), 3),
            "doc_order": f"fixed (seed {ctx.qa_order_seed})" if fixed else "per_sample",
            "gold_positions": positions, "gold_depths": [round((p - 1) / max(len(chosen) - 1, 1), 4) for p in positions],
            "verified": ctx.verify}
    return prompt, prefix, list(qa["outputs"]), n_tokens, meta
