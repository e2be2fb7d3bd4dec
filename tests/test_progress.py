"""Progress lines: counts, cache-aware rate and ETA, checked by hand on a scripted clock."""

from __future__ import annotations

import io

from longctx.core.progress import Progress, format_duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_format_duration_hand_cases():
    assert [format_duration(s) for s in (0, 59.4, 75, 3599, 3725, 90061)] == [
        "0s", "59s", "1m 15s", "59m 59s", "1h 02m", "25h 01m"]


def test_plain_lines_with_cache_aware_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress("QA generation", "request", enabled=True, interval_s=10, stream=out, clock=clock)
    assert p.bar is None  # a StringIO is no terminal: plain lines
    p.add_total(100)
    p.cached(20)
    p.step(20)  # 20 answered from the cache at t=0: no line yet (interval not reached)
    assert out.getvalue() == ""
    clock.now = 30.0
    p.step(10)  # 10 paid requests in 30 s: 3 s each, 70 left -> 210 s
    p.document_done()
    lines = out.getvalue().splitlines()
    assert lines == ["[QA generation] 0 documents done, 30/100 requests (20 from cache), 3.0 s/request, ETA 3m 30s"]
    clock.now = 35.0  # within the interval: document_done prints nothing more
    p.document_done()
    assert len(out.getvalue().splitlines()) == 1
    clock.now = 60.0
    p.add_total(10)  # work discovered later
    p.step(10)  # 20 paid in 60 s: 3 s each, 110 - 40 = 70 left -> 210 s
    assert out.getvalue().splitlines()[-1].endswith("2 documents done, 40/110 requests (20 from cache), "
                                                     "3.0 s/request, ETA 3m 30s")
    p.close()
    assert out.getvalue().splitlines()[-1] == ("[QA generation] 2 documents done, 40/110 requests "
                                               "(20 from cache), 3.0 s/request, finished in 1m 00s")


def test_no_eta_before_paid_work_and_disabled_prints_nothing():
    clock, out = Clock(), io.StringIO()
    p = Progress("evaluation", "task group", total=4, interval_s=0, stream=out, clock=clock,
                 documents_label=None)
    p.cached(1)
    p.step()
    assert p.eta_s() is None
    assert out.getvalue().splitlines() == ["[evaluation] 1/4 task groups (1 from cache)"]
    p.step(4)  # past the plan (retries, replacements): no ETA, the plan is named
    assert p.eta_s() is None
    assert out.getvalue().splitlines()[-1] == "[evaluation] 5 task groups (4 planned) (1 from cache), 0.0 s/task group"
    quiet = io.StringIO()
    q = Progress("x", "request", enabled=False, stream=quiet, interval_s=0, clock=clock)
    q.step()
    q.close()
    assert quiet.getvalue() == ""
