"""Provider limits: RPM / TPM windows, concurrency that halves on 429 and recovers.

The window arithmetic is checked on a hand-driven clock (no sleeping, no machine speed); the
client against the fault server is judged by counts in the server's own log: wasted requests
(429s) under a storm, and the concurrency reached once the storm is over.
"""

from __future__ import annotations

import asyncio

import pytest

from fault_server import FaultServer
from longctx.llm import Accounting, LLMClient, LLMConfig
from longctx.llm.limits import AdaptiveGate, RateLimiter, estimate_tokens

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_is_a_sliding_window():
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=3, tokens_per_minute=0, clock=clock)
    for _ in range(3):
        assert limiter.delay(1) == (0.0, "")
        asyncio.run(limiter.acquire(1))
        clock.now += 10
    # three starts at 1000, 1010, 1020: the fourth may go when the first leaves the window
    assert limiter.delay(1) == (pytest.approx(30.0), "rpm")
    clock.now = 1060.0
    assert limiter.delay(1) == (0.0, "")


def test_tokens_per_minute_charges_the_estimate_then_the_reported_usage():
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=0, tokens_per_minute=1000, clock=clock)
    first, _ = asyncio.run(limiter.acquire(estimate_tokens(2000, 300)))  # 500 + 1 + 300 = 801 charged
    clock.now += 5
    # 801 + 300 > 1000: wait until the first start leaves the window
    assert limiter.delay(300) == (pytest.approx(55.0), "tpm")
    limiter.settle(first, 520)  # the provider reported 520 tokens: room for 480 more
    assert limiter.delay(300) == (0.0, "")
    assert limiter.delay(481)[1] == "tpm"
    # a request larger than the whole window still goes, alone, once the window is empty
    clock.now += 60
    assert limiter.delay(5000) == (0.0, "")


def test_window_scales_the_limits_for_short_windows():
    limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=60_000, window_s=0.5)
    assert (limiter.max_requests, limiter.max_tokens) == (5, 500.0)
    with pytest.raises(ValueError):
        RateLimiter(-1, 0)


def test_gate_halves_once_per_round_and_grows_back_by_one_per_limit_answers():
    async def run() -> list[int]:
        gate = AdaptiveGate(8)
        rounds = [await gate.acquire() for _ in range(8)]  # a burst of 8, all in round 0
        seen = []
        for r in rounds[:4]:  # four 429s from the same burst: one cut, 8 -> 4
            await gate.release(r, "429")
            seen.append(gate.limit)
        for r in rounds[4:]:
            await gate.release(r, "other")  # transport failures say nothing about the limit
        seen.append(gate.limit)
        r = await gate.acquire()
        await gate.release(r, "429")  # a request sent after the cut: a new round, 4 -> 2
        seen.append(gate.limit)
        for _ in range(2 + 3):  # 2 answers at limit 2 -> 3, then 3 answers -> 4
            await gate.release(await gate.acquire(), "answered")
        seen.append(gate.limit)
        assert (gate.decreases, gate.increases, gate.lowest) == (2, 2, 2)
        return seen

    assert asyncio.run(run()) == [4, 4, 4, 4, 4, 2, 4]


def test_fixed_gate_never_moves():
    async def run() -> int:
        gate = AdaptiveGate(4, adaptive=False)
        await gate.release(await gate.acquire(), "429")
        return gate.limit

    assert asyncio.run(run()) == 4


N_STORM = 240        # calls in the storm test
STORM_DELIVERIES = 60  # the storm lasts until the server has answered this many


def _storm_run(adaptive: bool) -> tuple[list[dict], Accounting, int]:
    accounting = Accounting()
    # capacity 4 while storming; each answer holds its slot 0.2 s so the client's concurrency,
    # not its speed, decides how many requests are in flight
    with FaultServer(capacity=4, storm_until=STORM_DELIVERIES, delay_s=0.2, retry_after_s=0.2) as server:
        async def run() -> int:
            config = LLMConfig(base_url=server.base_url, model="fault-model", max_concurrency=16, timeout_s=600,
                               max_attempts=1000, backoff_base_s=0.01, backoff_max_s=0.05,
                               adaptive_concurrency=adaptive)
            async with LLMClient(config, accounting=accounting) as llm:
                await asyncio.gather(*[llm.chat([{"role": "user", "content": f"storm {i}"}], schema=SCHEMA, seed=i)
                                       for i in range(N_STORM)])
                return llm.concurrency
        final = asyncio.run(run())
        return list(server.log), accounting, final


def test_adaptive_concurrency_wastes_far_fewer_requests_in_a_429_storm_and_recovers():
    fixed_log, fixed_acc, _ = _storm_run(adaptive=False)
    log, acc, final = _storm_run(adaptive=True)
    wasted = sum(e["fault"] == "storm429" for e in log)
    fixed_wasted = sum(e["fault"] == "storm429" for e in fixed_log)
    # both complete every call; the adaptive client sends a fraction of the fixed one's 429s
    assert acc.total().calls == fixed_acc.total().calls == N_STORM
    assert sum(e["delivered"] for e in log) == sum(e["delivered"] for e in fixed_log) == N_STORM
    assert 0 < wasted * 3 < fixed_wasted, (wasted, fixed_wasted)
    limits = acc.to_dict()["llm_limits"]
    assert limits["responses_429"] == wasted == acc.total().retries["429"]
    assert limits["concurrency_decreases"] >= 2 and limits["lowest_concurrency"] <= 4
    # after the storm the limit climbs back to max_concurrency, and the server sees it
    assert final == 16 and limits["concurrency_increases"] >= 16 - limits["lowest_concurrency"]
    delivered = storm_end = 0
    for storm_end, entry in enumerate(log):
        delivered += entry["delivered"]
        if delivered >= STORM_DELIVERIES:
            break
    assert max(e["in_flight"] for e in log[storm_end + 1:]) > 4
    assert fixed_acc.to_dict()["llm_limits"].get("concurrency_decreases", 0) == 0


def test_client_keeps_requests_per_minute_counted_as_waits():
    accounting = Accounting()
    with FaultServer() as server:
        async def run() -> None:
            # 600 RPM over a 0.5 s window: 5 requests per half second
            config = LLMConfig(base_url=server.base_url, model="fault-model", max_concurrency=32, timeout_s=600,
                               requests_per_minute=600, rate_window_s=0.5)
            async with LLMClient(config, accounting=accounting) as llm:
                await asyncio.gather(*[llm.chat([{"role": "user", "content": f"rpm {i}"}], schema=SCHEMA)
                                       for i in range(12)])
        asyncio.run(run())
        assert len(server.log) == 12
    # all 12 calls reach the limiter together: 5 start, 7 wait (each counted once)
    assert accounting.to_dict()["llm_limits"] == {"rpm_waits": 7}
