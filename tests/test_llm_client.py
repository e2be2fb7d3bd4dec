"""LLMClient against a real local HTTP server that injects faults (tests/fault_server.py).

Each test asserts the run completes, every fault is counted under its reason, nothing is lost,
and the limits (Retry-After, max_attempts, max_concurrency) hold.

Counts must hold on a loaded machine, so no normal answer may run into a timeout: the whole-
attempt ``timeout_s`` is a minute, and the injected fault that must time out is a ``stall``
(headers, then silence), caught by ``stall_timeout_s``. A server that answers in one write
cannot stall, however slow the machine.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from fault_server import FaultServer, answer_for
from longctx.llm import Accounting, LLMCallFailed, LLMClient, LLMConfig, ResponseCache

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}},
          "required": ["answer", "n"], "additionalProperties": False}


def messages(name: str, faults: str = "") -> list[dict]:
    user = f"request {name}" + (f"\nfaults: {faults}" if faults else "")
    return [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": user}]


def config(server: FaultServer, **overrides) -> LLMConfig:
    base = dict(base_url=server.base_url, model="fault-model", timeout_s=60, stall_timeout_s=1.0, max_attempts=4,
                backoff_base_s=0.01, backoff_max_s=0.05)
    base.update(overrides)
    return LLMConfig(**base)


def test_every_fault_is_retried_counted_and_answered():
    scripts = {"rate": "429", "server": "500,503", "stall": "stall", "drop": "drop", "body": "badbody",
               "prose": "notjson", "shape": "schema", "cut": "length"}
    scripts.update({f"clean{i}": "" for i in range(4)})
    accounting = Accounting()
    with FaultServer(retry_after_s=0.2) as server:
        async def run():
            async with LLMClient(config(server), accounting=accounting) as llm:
                return await asyncio.gather(*[
                    llm.chat(messages(name, faults), schema=SCHEMA, seed=7, max_tokens=50,
                             stage="diverse", doc_id=name) for name, faults in scripts.items()])
        results = asyncio.run(run())

    assert len(results) == len(scripts)  # nothing lost
    for (name, faults), result in zip(scripts.items(), results, strict=True):
        content_retries = faults in ("notjson", "schema", "length")
        # content failures are re-sent with seed + 1; transient ones keep the seed
        assert result.data == {"answer": answer_for(messages(name, faults), 7 + content_retries), "n": 2}
        assert result.attempts == 1 + len(faults.split(",")) * bool(faults)
        seeds = [e["seed"] for e in server.requests_for(f"request {name}")]
        assert seeds == ([7, 8] if content_retries else [7] * result.attempts)
    total = accounting.total().to_dict()
    assert total["retries_by_reason"] == {"429": 1, "5xx": 2, "timeout": 1, "connection": 1, "bad_response": 1,
                                          "bad_json": 1, "schema": 1, "length": 1}
    assert total["requests"] == len(server.log) == len(scripts) + 9
    assert total["calls"] == len(scripts) and total["failures"] == 0 and total["cache_hits"] == 0
    # usage of every received answer is paid for, rejected content included (not the one that stalled)
    answered = sum(1 for e in server.log if e["fault"] in ("ok", "notjson", "schema", "length"))
    assert total["prompt_tokens"] == 10 * answered
    assert accounting.for_doc("shape")["retries_by_reason"] == {"schema": 1}
    assert accounting.for_stage("diverse")["calls"] == len(scripts)


def test_content_failures_retry_at_once_transport_faults_back_off(monkeypatch):
    """A weak answer (prose, off the schema, cut) is retried with the next seed at once: the server
    answered, so there is nothing to back off from (at concurrency 1 a wait idles the whole run).
    A 5xx waits its full-jitter backoff. The client's waits are recorded, not timed."""
    import longctx.llm.client as client_module

    waits = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay, *args, **kwargs):
        if delay > 0:          # sleep(0) is a yield to the event loop, not a wait
            waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(client_module.asyncio, "sleep", recording_sleep)
    with FaultServer() as server:
        async def run(name, faults):
            async with LLMClient(config(server, backoff_base_s=30.0, backoff_max_s=30.0)) as llm:
                return await llm.chat(messages(name, faults), schema=SCHEMA, seed=7, max_tokens=50)
        weak = [asyncio.run(run(name, faults)) for name, faults in
                (("prose", "notjson"), ("shape", "schema"), ("cut", "length"))]
        assert [r.attempts for r in weak] == [2, 2, 2] and waits == []
        flaky = asyncio.run(run("server", "500"))
    assert flaky.attempts == 2 and len(waits) == 1 and 0 <= waits[0] <= 30.0


def test_an_answer_that_never_comes_times_out_and_is_retried():
    # The one test of the whole-attempt timeout: it must be short to be caught, so a loaded
    # machine may time out the retries too; only "at least once, then answered" is asserted.
    accounting = Accounting()
    with FaultServer(hang_s=3600) as server:
        async def run():
            async with LLMClient(config(server, timeout_s=0.5, max_attempts=20), accounting=accounting) as llm:
                return await llm.chat(messages("late", "hang"), schema=SCHEMA, seed=2)
        result = asyncio.run(run())
    assert result.data == {"answer": answer_for(messages("late", "hang"), 2), "n": 2}
    assert accounting.total().retries["timeout"] >= 1 == server.log[0]["fault"].count("hang")


@pytest.mark.parametrize("fault, at_least_s", [("429", 1.0), ("429date", 1.5)])
def test_retry_after_is_honoured(fault, at_least_s):
    with FaultServer(retry_after_s=1.0) as server:
        async def run():
            async with LLMClient(config(server, timeout_s=5)) as llm:
                return await llm.chat(messages("wait", fault), schema=SCHEMA, seed=1)
        result = asyncio.run(run())
        first, second = server.requests_for("request wait")
    assert result.attempts == 2
    # the client's backoff is at most 0.05 s here, so only the header explains the wait
    assert second["t"] - first["t"] >= at_least_s


def test_exhausted_attempts_raise_typed_error_and_run_goes_on():
    accounting = Accounting()
    with FaultServer() as server:
        async def run():
            async with LLMClient(config(server, max_attempts=3), accounting=accounting) as llm:
                return await asyncio.gather(
                    llm.chat(messages("doomed", "500,500,500,500"), schema=SCHEMA, stage="s", doc_id="d1"),
                    llm.chat(messages("denied", "401echo"), schema=SCHEMA, stage="s", doc_id="d2"),
                    llm.chat(messages("fine"), schema=SCHEMA, stage="s", doc_id="d3"),
                    return_exceptions=True)
        doomed, denied, fine = asyncio.run(run())
    assert isinstance(doomed, LLMCallFailed) and doomed.reason == "5xx" and doomed.attempts == 3
    assert doomed.doc_id == "d1" and "500" in str(doomed)
    # a 4xx other than 408/429 is not retried
    assert isinstance(denied, LLMCallFailed) and denied.reason == "http_4xx" and denied.attempts == 1
    assert fine.data["n"] == 2
    total = accounting.total().to_dict()
    assert total["failures_by_reason"] == {"5xx": 1, "http_4xx": 1}
    assert total["retries_by_reason"] == {"5xx": 2}
    assert total["requests"] == 3 + 1 + 1


def test_response_format_falls_back_once_and_is_remembered():
    accounting = Accounting()
    with FaultServer(reject_json_schema=True) as server:
        async def run():
            async with LLMClient(config(server), accounting=accounting) as llm:
                burst = await asyncio.gather(*[llm.chat(messages(f"b{i}"), schema=SCHEMA) for i in range(4)])
                later = await llm.chat(messages("later"), schema=SCHEMA)
                return llm.response_format, burst, later
        mode, burst, later = asyncio.run(run())
    assert mode == "json_object"  # four concurrent 400s step down one level, not three
    assert all(r.attempts == 1 for r in burst + [later])  # discovery is not charged to the call
    assert [e["response_format"] for e in server.requests_for("request later")] == ["json_object"]
    assert Counter(e["response_format"] for e in server.log) == {"json_schema": 4, "json_object": 5}
    assert accounting.total().retries["response_format"] == 4


def test_concurrency_bound_is_respected():
    with FaultServer(delay_s=0.05) as server:
        async def run():
            async with LLMClient(config(server, max_concurrency=8, timeout_s=10)) as llm:
                return await asyncio.gather(*[llm.chat(messages(f"c{i}"), schema=SCHEMA) for i in range(80)])
        results = asyncio.run(run())
    assert len(results) == 80 and len(server.log) == 80
    assert 2 <= server.max_in_flight <= 8


def test_cache_hits_are_not_sent_and_are_counted(tmp_path):
    accounting, outcomes = Accounting(), []
    with FaultServer() as server:
        async def run():
            with ResponseCache(tmp_path, "responses-0-of-1") as cache:
                async with LLMClient(config(server), cache=cache, accounting=accounting,
                                     on_done=lambda stage, outcome: outcomes.append(outcome)) as llm:
                    first = await llm.chat(messages("same"), schema=SCHEMA, seed=3, temperature=0.5, stage="x")
                    again = await llm.chat(messages("same"), schema=SCHEMA, seed=3, temperature=0.5, stage="x")
                    other_seed = await llm.chat(messages("same"), schema=SCHEMA, seed=4, temperature=0.5, stage="x")
                    return first, again, other_seed
        first, again, other_seed = asyncio.run(run())
    assert not first.cached and again.cached and not other_seed.cached
    assert again.data == first.data and again.key == first.key and again.attempts == 0
    assert other_seed.data != first.data
    assert len(server.log) == 2
    assert outcomes == ["sent", "cached", "sent"]
    total = accounting.total()
    assert (total.calls, total.cache_hits, total.requests) == (3, 1, 2)


def test_schema_violation_is_never_cached(tmp_path):
    with FaultServer() as server:
        async def run():
            with ResponseCache(tmp_path) as cache:
                async with LLMClient(config(server, max_attempts=2), cache=cache) as llm:
                    with pytest.raises(LLMCallFailed) as err:
                        await llm.chat(messages("bad", "schema,schema"), schema=SCHEMA, seed=1)
                return err.value, len(cache)
        err, stored = asyncio.run(run())
    assert err.reason == "schema" and stored == 0


def test_length_answer_is_accepted_only_when_asked(tmp_path):
    # evaluation: a generation that reaches its budget is a result, not a fault
    accounting = Accounting()
    with FaultServer() as server:
        async def run():
            with ResponseCache(tmp_path) as cache:
                async with LLMClient(config(server), cache=cache, accounting=accounting) as llm:
                    accepted = await llm.chat(messages("budget", "length"), seed=5, max_tokens=4,
                                              accept_length=True, stage="eval")
                    replayed = await llm.chat(messages("budget", "length"), seed=5, max_tokens=4,
                                              accept_length=True, stage="eval")
                    retried = await llm.chat(messages("strict", "length"), seed=5, max_tokens=4, stage="gen")
                return accepted, replayed, retried
        accepted, replayed, retried = asyncio.run(run())
        budget_seeds = [e["seed"] for e in server.requests_for("request budget")]
        strict_seeds = [e["seed"] for e in server.requests_for("request strict")]
    assert (accepted.finish_reason, accepted.attempts, accepted.data) == ("length", 1, None)
    assert len(accepted.content) == 12  # the server's cut answer, returned as sent
    assert replayed.cached and replayed.content == accepted.content  # stored like any answer
    assert budget_seeds == [5]
    # without accept_length the cut answer is retried with seed + 1 (and the clean one returned)
    assert (retried.finish_reason, retried.attempts) == ("stop", 2) and strict_seeds == [5, 6]
    assert accounting.for_stage("eval")["retries"] == 0
    assert accounting.for_stage("gen")["retries_by_reason"] == {"length": 1}


def test_completion_mode_takes_one_raw_prompt_without_schema():
    async def run(**kwargs):
        async with LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1", model="m")) as llm:
            await llm.chat(**kwargs)
    with pytest.raises(ValueError, match="one raw prompt"):
        asyncio.run(run(messages=messages("two"), completion=True))
    with pytest.raises(ValueError, match="one raw prompt"):
        asyncio.run(run(messages=messages("two")[-1:], schema=SCHEMA, completion=True))


def test_cost_estimate_uses_prices():
    accounting = Accounting()
    with FaultServer() as server:
        async def run():
            cfg = config(server, price_input_per_mtok=2.0, price_output_per_mtok=10.0)
            async with LLMClient(cfg, accounting=accounting) as llm:
                await llm.chat(messages("priced"), schema=SCHEMA)
        asyncio.run(run())
    assert accounting.total().cost_usd == pytest.approx((10 * 2.0 + 5 * 10.0) / 1e6)


def test_client_refuses_use_outside_context():
    llm = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1", model="m"))
    with pytest.raises(RuntimeError, match="async with"):
        asyncio.run(llm.chat(messages("x")))


def test_closed_port_fails_as_connection_error_quickly():
    cfg = LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", max_attempts=2, backoff_base_s=0.01)
    async def run():
        async with LLMClient(cfg) as llm:
            return await llm.chat(messages("nobody home"))
    started = time.monotonic()
    with pytest.raises(LLMCallFailed) as err:
        asyncio.run(run())
    assert err.value.reason == "connection" and time.monotonic() - started < 5
