"""Backoff with full jitter and Retry-After parsing."""

from __future__ import annotations

import random
import time
from email.utils import formatdate

import pytest

from longctx.llm.retry import backoff_delay, next_delay, parse_retry_after


def test_backoff_is_full_jitter_under_an_exponential_cap():
    rng = random.Random(0)
    for failures, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (10, 8.0)]:
        delays = [backoff_delay(failures, 0.5, 8.0, rng) for _ in range(2000)]
        assert 0 <= min(delays) < 0.05 * cap and 0.95 * cap < max(delays) <= cap


@pytest.mark.parametrize("header, expected", [("3", 3.0), ("0.5", 0.5), ("-2", 0.0), (None, None),
                                              ("", None), ("soon", None)])
def test_retry_after_seconds(header, expected):
    assert parse_retry_after(header) == expected


def test_retry_after_http_date():
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_retry_after_wins_over_backoff_with_small_jitter():
    rng = random.Random(1)
    delays = [next_delay(5, 2.0, 0.5, 60.0, rng) for _ in range(500)]
    assert 2.0 <= min(delays) and max(delays) <= 2.2
