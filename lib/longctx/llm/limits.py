"""Provider limits: requests and tokens per minute, and a concurrency that backs off on 429.

Hosted APIs cap requests per minute (RPM) and tokens per minute (TPM) and answer 429 beyond
them. Sending into a 429 wastes a request and, with many in flight, most of them. Two parts:

* :class:`RateLimiter` keeps the client under RPM and TPM on its own: a request starts only if
  the requests and tokens started in the last ``window_s`` seconds leave room for it (a sliding
  window, the way providers count). A request's tokens are not known before it is answered, so
  it is charged ``prompt characters / 4 + max_tokens`` (the providers' own pre-send estimate)
  and settled to the reported usage once answered.
* :class:`AdaptiveGate` is the concurrency bound. On a 429 it halves the number of requests
  allowed in flight, once per round (a 429 for a request sent before the last cut does not cut
  again: the whole burst that hit the limit answers 429 together); after each ``limit``
  answers without a 429 it allows one more, up to ``max_concurrency`` (additive increase,
  multiplicative decrease, as TCP does for the same problem: the limit is unknown and moves).

Both count what they did (:class:`LimitCounts`); the client adds it to the manifest.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

__all__ = ["RateLimiter", "AdaptiveGate", "estimate_tokens"]


def estimate_tokens(prompt_chars: int, max_tokens: int | None) -> int:
    """Tokens charged against TPM before the answer: ~4 characters per token, plus the budget."""
    return prompt_chars // 4 + 1 + (max_tokens or 0)


@dataclass
class _Start:
    """One started request in the window: when, and the tokens charged for it."""

    t: float
    tokens: float


class RateLimiter:
    """At most ``requests_per_minute`` starts and ``tokens_per_minute`` tokens per window.

    ``window_s`` is the provider's accounting window (60 s); the limits scale with it, so a test
    can use a short window. 0 for a limit means none. ``clock`` is the time source.
    """

    def __init__(self, requests_per_minute: float, tokens_per_minute: float, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        if requests_per_minute < 0 or tokens_per_minute < 0 or window_s <= 0:
            raise ValueError("rate limits must be >= 0 and the window > 0")
        self.window_s = window_s
        # Per window; at least one request, or nothing could ever start.
        self.max_requests = max(1, int(requests_per_minute * window_s / 60)) if requests_per_minute else 0
        self.max_tokens = tokens_per_minute * window_s / 60 if tokens_per_minute else 0.0
        self.clock = clock
        self.waits = {"rpm": 0, "tpm": 0}  # acquisitions that had to wait, by the limit that held them
        self._starts: deque[_Start] = deque()

    @property
    def active(self) -> bool:
        return bool(self.max_requests or self.max_tokens)

    def _expire(self, now: float) -> None:
        while self._starts and self._starts[0].t <= now - self.window_s:
            self._starts.popleft()

    def delay(self, tokens: float) -> tuple[float, str]:
        """Seconds until a request charged ``tokens`` may start (0.0 = now), and which limit holds it."""
        now = self.clock()
        self._expire(now)
        wait, which = 0.0, ""
        if self.max_requests and len(self._starts) >= self.max_requests:
            # the start that must leave the window before there is room for one more
            wait, which = self._starts[-self.max_requests].t + self.window_s - now, "rpm"
        if self.max_tokens:
            tokens = min(tokens, self.max_tokens)  # a request larger than the window goes alone
            excess = sum(s.tokens for s in self._starts) + tokens - self.max_tokens
            for start in self._starts:
                if excess <= 0:
                    break
                excess -= start.tokens
                if start.t + self.window_s - now > wait:
                    wait, which = start.t + self.window_s - now, "tpm"
        return max(0.0, wait), which

    async def acquire(self, tokens: float) -> tuple[_Start, str]:
        """Wait until there is room, then charge ``tokens``. Returns the start (to
        :meth:`settle` later) and the limit that made it wait ("rpm", "tpm" or "")."""
        waited = ""
        while True:
            wait, which = self.delay(tokens)
            if wait <= 0:
                break
            waited = waited or which
            await asyncio.sleep(wait)
        if waited:
            self.waits[waited] += 1
        start = _Start(self.clock(), tokens)
        self._starts.append(start)
        return start, waited

    @staticmethod
    def settle(start: _Start, tokens: int) -> None:
        """Replace the estimate by the tokens the provider reported for the request."""
        start.tokens = tokens


class AdaptiveGate:
    """A concurrency bound that halves on 429 and grows back by one per ``limit`` answers.

    First come, first served, like ``asyncio.Semaphore``: a newcomer never overtakes a waiting
    call, so with one request in flight the order of requests does not depend on timing (and
    stage 1's output stays identical across runs). With ``adaptive=False`` it is a fixed bound.
    """

    def __init__(self, max_limit: int, adaptive: bool = True):
        self.max_limit = max_limit
        self.limit = max_limit
        self.adaptive = adaptive
        self.lowest = max_limit  # the smallest limit reached
        self.decreases = 0
        self.increases = 0
        self.in_flight = 0
        self._round = 0        # bumped by every cut: a 429 from an older round does not cut again
        self._streak = 0       # answers without a 429 since the last change
        self._waiters: deque[asyncio.Future] = deque()

    async def acquire(self) -> int:
        """Wait for a free slot; returns the round the request is sent in (for :meth:`release`)."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return self._round
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # resolved by _wake, which has counted the slot as ours
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # the slot came as we were cancelled
                self.in_flight -= 1
                self._wake()
            raise
        return self._round

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    async def release(self, sent_round: int, outcome: str) -> str:
        """Free the slot. ``outcome``: ``"429"``, ``"answered"`` (the server sent a completion,
        valid or not) or ``"other"`` (transport failure: says nothing about the rate limit).
        Returns ``"down"`` or ``"up"`` when the limit changed, else ``""``."""
        change = ""
        self.in_flight -= 1
        if self.adaptive and outcome == "429" and sent_round == self._round:
            self._round += 1
            self._streak = 0
            if self.limit > 1:
                self.limit = max(1, self.limit // 2)
                self.decreases += 1
                self.lowest = min(self.lowest, self.limit)
                change = "down"
        elif self.adaptive and outcome == "answered" and self.limit < self.max_limit:
            self._streak += 1
            if self._streak >= self.limit:
                self.limit += 1
                self.increases += 1
                self._streak = 0
                change = "up"
        self._wake()
        return change
