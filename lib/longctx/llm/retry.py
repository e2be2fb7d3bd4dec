"""How long to wait before the next attempt: full-jitter backoff, or what the server asked for.

Full jitter (sleep uniformly in ``[0, min(cap, base * 2**n)]``) spreads the retries of many
concurrent requests that failed together, so they do not hit a recovering server in lock-step.
A ``Retry-After`` header wins over the backoff: the server knows when its window reopens.
"""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

__all__ = ["backoff_delay", "parse_retry_after", "next_delay"]


def backoff_delay(failures: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds to sleep after the ``failures``-th consecutive failed attempt (1-based)."""
    ceiling = min(max_s, base_s * 2 ** max(0, failures - 1))
    return (rng or random).uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: a number of seconds or an HTTP date; None if absent
    or unreadable (a malformed header must not stop the retry, only lose the hint)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def next_delay(failures: int, retry_after_s: float | None, base_s: float, max_s: float,
               rng: random.Random | None = None) -> float:
    """The wait before the next attempt.

    With ``Retry-After`` we wait at least that long, plus up to 10% jitter so that a burst of
    rate-limited requests does not return at the same instant.
    """
    if retry_after_s is not None:
        return retry_after_s * (1.0 + 0.1 * (rng or random).random())
    return backoff_delay(failures, base_s, max_s, rng)
