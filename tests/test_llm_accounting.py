"""Accounting: counters by stage and by document, merged across shards, dumped for manifests."""

from __future__ import annotations

import json

from longctx.llm.accounting import Accounting


def _shard(doc: str, cached: bool) -> Accounting:
    acc = Accounting()
    acc.call("diverse", doc, cached=cached)
    if not cached:
        acc.request("diverse", doc)
        acc.retry("diverse", doc, "429")
        acc.request("diverse", doc)
        acc.usage("diverse", doc, 100, 20, 0.5)
    acc.call("summary", doc, cached=False)
    acc.request("summary", doc)
    acc.failure("summary", doc, "5xx")
    acc.replayed("summary", doc, "length")  # a rejected answer read back from a killed run's record
    acc.limit_event("responses_429")
    acc.limit_event("concurrency_decreases")
    acc.lowest_concurrency(4 if cached else 2)
    return acc


def test_counts_roll_up_by_stage_and_by_document():
    acc = _shard("emma", cached=False)
    assert acc.for_doc("emma") == {
        "calls": 2, "cache_hits": 0, "requests": 3, "retries": 1, "retries_by_reason": {"429": 1},
        "failures": 1, "failures_by_reason": {"5xx": 1}, "replayed_failures": 1,
        "replayed_by_reason": {"length": 1},
        "prompt_tokens": 100, "completion_tokens": 20, "cost_usd": 0.5}
    assert acc.for_stage("diverse")["requests"] == 2 and acc.for_stage("summary")["failures"] == 1
    assert acc.for_doc("nobody")["calls"] == 0
    assert acc.total().to_dict() == acc.for_doc("emma")


def test_merge_and_dict_round_trip_for_shards():
    a, b = _shard("emma", cached=False), _shard("persuasion", cached=True)
    merged = Accounting()
    for shard in (a, b):  # as the merge step does from each shard's manifest.json
        merged.merge(Accounting.from_dict(json.loads(json.dumps(shard.to_dict()))))
    total = merged.total()
    assert (total.calls, total.cache_hits, total.requests) == (4, 1, 4)
    assert dict(total.retries) == {"429": 1} and dict(total.failures) == {"5xx": 2}
    assert dict(total.replayed) == {"length": 2}
    assert set(merged.to_dict()["llm_by_document"]) == {"emma", "persuasion"}
    # client-wide limits: counts add up, the lowest concurrency is the lowest of any shard
    assert merged.to_dict()["llm_limits"] == {"concurrency_decreases": 2, "lowest_concurrency": 2,
                                              "responses_429": 2}
    assert merged.to_dict() == Accounting.from_dict(merged.to_dict()).to_dict()
