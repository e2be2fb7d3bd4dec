"""Progress of a long stage, visible wherever it runs.

At an interactive terminal it is a live tqdm bar. Everywhere else (a notebook run by papermill,
``./dev demo``, a SLURM log, a notebook in JupyterLab, whose stderr is not a terminal) a bar
redrawn with carriage returns is either invisible or thousands of lines, so it prints one plain
line every ``interval_s`` seconds and one at the end:

    [QA generation] 3 documents done, 120/265 requests (40 from cache), 2.2 s/request, ETA 5m 19s

The ETA divides the remaining work by the rate so far; requests answered from the cache are not
counted in the rate (a resumed run would otherwise promise an ETA it cannot keep).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1m 15s"``; ``3725`` -> ``"1h 02m"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class Progress:
    """Counts work items of one stage and reports them with an ETA.

    ``unit`` names what ``step`` counts (``"request"``); ``total`` may grow with
    :meth:`add_total` as work is discovered (documents are chunked as they stream in).
    ``documents`` counts finished documents for the line (``documents_label=None`` leaves it out); :meth:`cached` marks work
    answered without cost. ``clock`` is injectable for tests.
    """

    def __init__(self, desc: str, unit: str, total: int = 0, enabled: bool = True,
                 interval_s: float = 15.0, stream: TextIO | None = None, live: bool | None = None,
                 documents_label: str | None = "documents", clock=time.monotonic,
                 note: Callable[[], str] | None = None):
        self.desc, self.unit, self.total = desc, unit, total
        self.enabled, self.interval_s = enabled, interval_s
        self.stream = stream if stream is not None else sys.stderr
        self.documents_label = documents_label
        self.note = note  # more for the line, e.g. the spend so far ("$1.20 spent")
        self.clock = clock
        self.done = self.from_cache = self.documents = 0
        self.started = self.last_line = clock()
        if live is None:
            live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = None
        if enabled and live:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=self.stream)

    def add_total(self, n: int) -> None:
        self.total += n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        self._maybe_print()

    def cached(self, n: int = 1) -> None:
        """``n`` of the steps (before or after they are stepped) cost nothing: left out of the rate."""
        self.from_cache += n

    def document_done(self, n: int = 1) -> None:
        self.documents += n
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.documents} {self.documents_label}", refresh=True)
        self._maybe_print()

    def eta_s(self) -> float | None:
        """Seconds left at the rate of the work paid for so far; None before any."""
        paid = self.done - self.from_cache
        left = self.total - self.done
        if paid <= 0 or left < 0 or self.total <= 0:
            return None
        return (self.clock() - self.started) / paid * left

    def line(self) -> str:
        parts = [f"{self.documents} {self.documents_label} done"] if self.documents_label else []
        if self.total and self.done <= self.total:
            parts.append(f"{self.done}/{self.total} {self.unit}s")
        else:  # retries and replacements went past the plan: no ETA, say what was planned
            parts.append(f"{self.done} {self.unit}s" + (f" ({self.total} planned)" if self.total else ""))
        if self.from_cache:
            parts[-1] += f" ({self.from_cache} from cache)"
        paid = self.done - self.from_cache
        if paid > 0:
            parts.append(f"{(self.clock() - self.started) / paid:.1f} s/{self.unit}")
        if self.note is not None and (extra := self.note()):
            parts.append(extra)
        eta = self.eta_s()
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return f"[{self.desc}] " + ", ".join(parts)

    def tick(self) -> None:
        """Print the line if it is due, also when no step came (slow requests): call it on a timer."""
        self._maybe_print()

    def _maybe_print(self, force: bool = False) -> None:
        if not self.enabled or self.bar is not None:
            return
        now = self.clock()
        if force or now - self.last_line >= self.interval_s:
            self.last_line = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            elapsed = format_duration(self.clock() - self.started)
            print(self.line().split(", ETA")[0] + f", finished in {elapsed}", file=self.stream, flush=True)
