"""Replay a call's recorded rejected answers, so that a resumed run sends none of them again.

A call whose answer is cut, not JSON or off-schema is retried with ``seed + n``; each rejected
answer is recorded (:meth:`ResponseCache.write`, table ``deliveries``) before the retry goes
out. After a kill the rerun walks that record: answer ``n`` is checked again with the same
rules (:func:`~longctx.llm.response.validate`), and while it fails the walk moves to ``n + 1``
with the attempt count it had then. Where the record ends, the call continues sending from
there; if the record reaches ``max_attempts`` the call gives up as it did before the kill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .cache import CachedResponse, ResponseCache, delivery_key
from .response import AttemptFailed

__all__ = ["Replay", "replay_record"]


@dataclass
class Replay:
    """Where a call stands after its record: continue from ``n`` content retries and
    ``attempts`` attempts, or finish with ``answer`` / ``gave_up`` without sending."""

    n: int = 0
    attempts: int = 0
    reasons: list[str] = field(default_factory=list)      # replayed rejections, in order
    answer: tuple[CachedResponse, Any] | None = None      # a recorded answer that passes now
    gave_up: AttemptFailed | None = None                  # the record ends in an exhausted call

    @property
    def finished(self) -> bool:
        return self.answer is not None or self.gave_up is not None


def replay_record(cache: ResponseCache, key: str, check: Callable[[CachedResponse], Any],
                  max_attempts: int) -> Replay:
    """Walk the rejected answers recorded for the call ``key``; ``check`` validates one."""
    state = Replay()
    while True:
        recorded = cache.get_delivery(delivery_key(key, state.n))
        if recorded is None:
            return state
        try:
            data = check(recorded.response)
        except AttemptFailed as err:
            state.reasons.append(err.reason)
            state.n += 1
            state.attempts = recorded.attempt
            if recorded.attempt >= max_attempts:
                state.gave_up = err
                return state
            continue
        # Rules changed since it was recorded (accept_length, a looser schema): it is an answer now.
        state.attempts = recorded.attempt
        state.answer = (recorded.response, data)
        return state
