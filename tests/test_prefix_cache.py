"""Prefix-cache measure: the trie and vLLM-style block cache on hand-computed cases, the chat
layout against transformers' apply_chat_template, and the real stage-1 prompts of a tiny dry run
(source text first) against the layout before them."""

from __future__ import annotations

from pathlib import Path

import pytest

from longctx import generate
from longctx.core.config import from_mapping
from longctx.core.tokenizer import load_tokenizer
from longctx.generate.params import GenerateParams
from longctx.llm.prefix_cache import BlockCache, PrefixCacheMeter, TokenTrie, llama31_chat_ids
from austen_books import write_openings

ROOT = Path(__file__).resolve().parents[1]
BEFORE = ROOT / "bench" / "prompts_before_prefix_layout"


def test_trie_returns_the_longest_prefix_shared_with_any_earlier_sequence():
    trie = TokenTrie()
    # (sequence, longest common prefix with any earlier one), worked out by hand
    cases = [([1, 2, 3, 4], 0), ([1, 2, 3, 5], 3), ([1, 2], 2), ([1, 2, 3, 4], 4), ([9], 0),
             ([1, 2, 3, 5, 6], 4), ([1, 2, 7], 2), ([9, 8], 1), ([1, 2, 3, 4, 0, 0], 4)]
    assert [trie.insert(ids) for ids, _ in cases] == [lcp for _, lcp in cases]
    # every token not shared is stored once: 4 + 1 + 0 + 0 + 1 + 1 + 1 + 1 + 2
    assert trie.distinct_tokens == 11 == sum(len(ids) - lcp for ids, lcp in cases)


def test_block_cache_counts_whole_chained_blocks_and_recomputes_the_last_token():
    cache = BlockCache(block_tokens=2)
    assert cache.insert([1, 2, 3, 4, 5]) == 0
    assert cache.insert([1, 2, 3, 4, 6]) == 4      # blocks [1,2] [3,4] hit; the 5th token is computed
    assert cache.insert([1, 2, 3, 4]) == 2         # a full hit drops its last block (vLLM)
    assert cache.insert([1, 2, 9, 9, 9]) == 2
    assert cache.insert([3, 4, 1, 2, 0]) == 0      # [3,4] as a first block is not [3,4] after [1,2]


def test_bounded_block_cache_evicts_least_recent_and_tails_first():
    cache = BlockCache(block_tokens=2, capacity_tokens=6)  # three blocks
    assert cache.insert([1, 2, 3, 4, 0]) == 0      # cached: [1,2], [1,2][3,4]
    assert cache.insert([5, 6, 7, 8, 0]) == 0      # four blocks: the oldest, A's tail [3,4], goes
    assert cache.insert([1, 2, 3, 4, 0]) == 2      # A's head is still there, its tail is not
    small = BlockCache(block_tokens=2, capacity_tokens=4)
    small.insert([1, 2, 3, 4, 0])
    small.insert([5, 6, 7, 8, 0])
    assert small.insert([1, 2, 3, 4, 0]) == 0      # both of A's blocks evicted


def test_meter_reports_shares_and_prefill_left():
    meter = PrefixCacheMeter(block_tokens=2, cache_tokens=4)
    for ids in ([1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [1, 2, 3, 4, 5]):
        meter.add(ids)
    stats = meter.stats()
    # token-exact: 0 + 4 + 4 (a repeated prompt still computes its last token); blocks: 0 + 4 + 4
    assert stats["prompt_tokens"] == 15 and stats["shared_tokens"] == 8 and stats["prefill_tokens_left"] == 7
    assert stats["block_shared_tokens"] == 8 and stats["shared_share"] == pytest.approx(8 / 15)
    assert stats["bounded_shared_tokens"] == 8 and stats["cache_tokens"] == 4
    with pytest.raises(ValueError, match="empty prompt"):
        meter.add([])


def test_chat_ids_equal_the_stock_llama31_template():
    from longctx.core.fast_tokenizer import llama3_chat_tokenizer

    fast, ours = llama3_chat_tokenizer(), load_tokenizer("llama3")
    messages = [{"role": "system", "content": "You are a careful reader. Reply with JSON only."},
                {"role": "user", "content": '<passage from "Emma">\nEmma Woodhouse, handsome,\n</passage>\n\n'
                                            'Write one question. Reply as JSON: {"question": "...?"}\n'}]
    theirs = fast.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    theirs = list(theirs["input_ids"] if hasattr(theirs, "keys") else theirs)
    assert llama31_chat_ids(messages, ours) == theirs


def _tiny(tmp_path: Path, name: str, **extra) -> dict:
    folder = tmp_path / "books"
    if not folder.is_dir():
        write_openings(folder, 2)
    params = from_mapping(GenerateParams, {
        "corpus": str(folder), "output_dir": str(tmp_path / name), "small_chunk_tokens": 512,
        "medium_chunk_tokens": 1536, "max_document_tokens": 3584, "n_hierarchical": 8, "n_diverse": 16,
        "progress": False, "llm_base_url": "http://stand-in/v1", "corpus_documents": 100, **extra})
    return generate.run(params, dry_run=True)


def test_stage1_prompts_of_a_tiny_run_share_their_source_prefix(tmp_path):
    manifest = _tiny(tmp_path, "new")
    cache = manifest["prefix_cache"]
    # the tiny run's requests, one per request the pipeline sent (nothing came from the cache)
    assert cache["prompts"] == manifest["totals"]["requests"] > 50
    assert cache["shared_share"] >= 0.5 and cache["block_shared_share"] >= 0.5
    assert cache["bounded_shared_share"] == pytest.approx(cache["block_shared_share"])  # all fits 1M tokens
    # the same run laid out as before (instruction headers first) reuses far less
    before = _tiny(tmp_path, "before", prompts_dir=str(BEFORE))["prefix_cache"]
    assert cache["shared_share"] > before["shared_share"] + 0.1
    projected = manifest["projection"]["prefix_cache"]
    assert projected["prefill_tokens_left"] == pytest.approx(
        manifest["projection"]["prompt_tokens"] * (1 - cache["bounded_shared_share"]), rel=1e-6)
    assert projected["wall_hours"] < manifest["projection"]["wall_hours"]


def test_judge_requests_open_with_the_block_their_question_was_asked_from(tmp_path):
    manifest = _tiny(tmp_path, "judge", judge_qa=True)
    # the stand-in approves every answer: nothing is lost to the judge, one verdict per QA
    assert manifest["counts"]["shortfall_hierarchical"] == manifest["counts"]["shortfall_diverse"] == 0
    judge = manifest["this_invocation"]["llm_by_stage"]["judge"]["calls"]
    assert judge == manifest["counts"]["hierarchical_qa"] + manifest["counts"]["diverse_qa"]
    # a verdict reuses the passage its question was asked from; the judge template before
    # (its source in <source> tags first) reused none of it
    assert manifest["prefix_cache"]["shared_share"] >= 0.6
    old_judge = tmp_path / "old-judge"
    old_judge.mkdir()
    (old_judge / "judge_qa.txt").write_text((BEFORE / "judge_qa.txt").read_text())
    before = _tiny(tmp_path, "judge-before", judge_qa=True, prompts_dir=str(old_judge))["prefix_cache"]
    assert manifest["prefix_cache"]["shared_share"] > before["shared_share"] + 0.05


def test_a_diverse_round_is_sent_in_document_order():
    """Requests on one passage go out together, so a bounded cache still holds it (the answers
    are still judged in slot order: the record does not depend on the send order)."""
    import asyncio

    from fixtures.austen_qa import austen_documents
    from scripted_llm import ScriptedServer, grounded_qa

    from longctx.generate.chunking import chunk_document
    from longctx.generate.corpus import Document
    from longctx.generate.pipeline import generate_document
    from longctx.generate.prompts import load_prompts
    from longctx.llm.client import LLMClient, LLMConfig

    doc_id, title, text = next(iter(austen_documents()))
    doc = Document(doc_id, title, f"test:{doc_id}", text[:12000])
    chunking = chunk_document(doc.text, load_tokenizer("llama3"), 256, 768)
    params = from_mapping(GenerateParams, {"small_chunk_tokens": 256, "medium_chunk_tokens": 768,
                                           "n_hierarchical": 0, "n_global_questions": 0, "n_diverse": 12,
                                           "diverse_types": ["temporal", "thematic", "character"],
                                           "llm_base_url": "http://scripted/v1", "progress": False})

    def answer(prompt: str, seed: int) -> dict:
        return {"summary": "Emma Woodhouse lives with her father at Hartfield."} if '{"summary"' in prompt \
            else grounded_qa(prompt, seed)

    with ScriptedServer(answer) as server:
        async def go():  # one request at a time: the server's log is the send order
            config = LLMConfig(base_url=server.base_url, model="scripted", max_concurrency=1, max_attempts=1)
            async with LLMClient(config) as llm:
                return await generate_document(llm, load_prompts(), params, doc, chunking)
        result = asyncio.run(go())
        diverse = [p for p, _, _ in server.log if "question about these passages" in p]
    chunks = [chunking.chunk_text(doc.text, c.chunk_id).strip() for c in chunking.chunks]
    first_round = [next(i for i, t in enumerate(chunks) if f"\n{t}\n</passage>" in p) for p in diverse[:12]]
    assert len(set(first_round)) > 3 and first_round == sorted(first_round)
    assert len(result.record["diverse_qa"]) == 12
