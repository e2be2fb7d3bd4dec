"""Who asked the LLM for what, and what it cost: counters per stage and per document.

Every chat call carries ``stage`` and ``doc_id`` tags; the client records each call under both,
so the manifest can say both "the diverse stage sent 12 000 requests" and "emma cost $0.41"
without a stage x document matrix. Totals are sums over stages.

Counters (:class:`Counts`):

* ``calls``: chat() calls; ``cache_hits``: calls answered from the cache (nothing sent)
* ``requests``: HTTP requests actually sent (every attempt, so ``requests >= calls - cache_hits``)
* ``retries`` / ``failures``: by :data:`~longctx.llm.errors.Reason`; a retry is a failed attempt
  followed by another, a failure a call that gave up
* ``replayed``: by reason, rejected answers (cut, not JSON, off-schema) that a resumed run read
  from the cache's record instead of sending again; they are neither requests nor retries of
  this invocation, and a call answered entirely from the record is a cache hit
* ``prompt_tokens`` / ``completion_tokens``: from ``usage`` of every answered attempt (a
  rejected answer was still paid for); ``cost_usd`` from the configured per-million prices

Client-wide, not per stage (:attr:`Accounting.limits`, manifest key ``llm_limits``): 429
answers, the adaptive concurrency's cuts and recoveries and the lowest limit it reached, and
how many requests waited for the RPM / TPM limits (:mod:`longctx.llm.limits`).

Shards each keep their own :class:`Accounting`; :meth:`Accounting.merge` and
:meth:`Accounting.from_dict` combine them, live or from their manifests.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Counts", "Accounting"]


@dataclass
class Counts:
    """Counters for one stage or one document (or the total)."""

    calls: int = 0
    cache_hits: int = 0
    requests: int = 0
    retries: Counter = field(default_factory=Counter)   # reason -> failed attempts that were retried
    failures: Counter = field(default_factory=Counter)  # reason -> calls that gave up
    replayed: Counter = field(default_factory=Counter)  # reason -> rejected answers replayed from the record
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, other: "Counts") -> None:
        """Add ``other``'s counters to these."""
        self.calls += other.calls
        self.cache_hits += other.cache_hits
        self.requests += other.requests
        self.retries.update(other.retries)
        self.failures.update(other.failures)
        self.replayed.update(other.replayed)
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd += other.cost_usd

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; ``retries``/``failures`` are totals, the breakdowns sit beside."""
        return {
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "requests": self.requests,
            "retries": sum(self.retries.values()),
            "retries_by_reason": dict(sorted(self.retries.items())),
            "failures": sum(self.failures.values()),
            "failures_by_reason": dict(sorted(self.failures.items())),
            "replayed_failures": sum(self.replayed.values()),
            "replayed_by_reason": dict(sorted(self.replayed.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Counts":
        """Inverse of :meth:`to_dict`."""
        return cls(calls=data["calls"], cache_hits=data["cache_hits"], requests=data["requests"],
                   retries=Counter(data.get("retries_by_reason", {})),
                   failures=Counter(data.get("failures_by_reason", {})),
                   replayed=Counter(data.get("replayed_by_reason", {})),
                   prompt_tokens=data["prompt_tokens"], completion_tokens=data["completion_tokens"],
                   cost_usd=float(data["cost_usd"]))


class Accounting:
    """Counters by stage and by document, filled by :class:`~longctx.llm.client.LLMClient`.

    Not thread-safe: the client updates it from its event loop only.
    """

    def __init__(self) -> None:
        self.by_stage: dict[str, Counts] = {}
        self.by_doc: dict[str, Counts] = {}
        # client-wide: responses_429, concurrency_decreases, concurrency_increases, rpm_waits,
        # tpm_waits (sums), lowest_concurrency (min; absent until a limit was cut)
        self.limits: Counter = Counter()

    def _both(self, stage: str, doc_id: str) -> tuple[Counts, Counts]:
        stage_counts = self.by_stage.get(stage)
        if stage_counts is None:
            stage_counts = self.by_stage[stage] = Counts()
        doc_counts = self.by_doc.get(doc_id)
        if doc_counts is None:
            doc_counts = self.by_doc[doc_id] = Counts()
        return stage_counts, doc_counts

    # ------------------------------------------------------------------ recording (client side)
    def call(self, stage: str, doc_id: str, *, cached: bool) -> None:
        for counts in self._both(stage, doc_id):
            counts.calls += 1
            counts.cache_hits += cached

    def request(self, stage: str, doc_id: str) -> None:
        for counts in self._both(stage, doc_id):
            counts.requests += 1

    def usage(self, stage: str, doc_id: str, prompt_tokens: int, completion_tokens: int,
              cost_usd: float) -> None:
        for counts in self._both(stage, doc_id):
            counts.prompt_tokens += prompt_tokens
            counts.completion_tokens += completion_tokens
            counts.cost_usd += cost_usd

    def retry(self, stage: str, doc_id: str, reason: str) -> None:
        for counts in self._both(stage, doc_id):
            counts.retries[reason] += 1

    def failure(self, stage: str, doc_id: str, reason: str) -> None:
        for counts in self._both(stage, doc_id):
            counts.failures[reason] += 1

    def replayed(self, stage: str, doc_id: str, reason: str) -> None:
        for counts in self._both(stage, doc_id):
            counts.replayed[reason] += 1

    def limit_event(self, name: str, n: int = 1) -> None:
        """Count a client-wide event (``responses_429``, ``concurrency_decreases``, ...)."""
        self.limits[name] += n

    def lowest_concurrency(self, limit: int) -> None:
        """Note the concurrency limit reached after a cut; the manifest keeps the lowest."""
        current = self.limits.get("lowest_concurrency")
        self.limits["lowest_concurrency"] = limit if current is None else min(current, limit)

    # ------------------------------------------------------------------ reading
    def total(self) -> Counts:
        """Sum over stages (equal to the sum over documents)."""
        total = Counts()
        for counts in self.by_stage.values():
            total.add(counts)
        return total

    def for_stage(self, stage: str) -> dict[str, Any]:
        """One stage's counters as a plain dict (zeros if the stage made no call)."""
        return self.by_stage.get(stage, Counts()).to_dict()

    def for_doc(self, doc_id: str) -> dict[str, Any]:
        """One document's counters as a plain dict (zeros if it made no call)."""
        return self.by_doc.get(doc_id, Counts()).to_dict()

    def merge(self, other: "Accounting") -> None:
        """Add another shard's counters into this one."""
        for stage, counts in other.by_stage.items():
            self.by_stage.setdefault(stage, Counts()).add(counts)
        for doc_id, counts in other.by_doc.items():
            self.by_doc.setdefault(doc_id, Counts()).add(counts)
        lowest = [a.limits["lowest_concurrency"] for a in (self, other) if "lowest_concurrency" in a.limits]
        self.limits.update({k: v for k, v in other.limits.items() if k != "lowest_concurrency"})
        if lowest:
            self.limits["lowest_concurrency"] = min(lowest)

    def to_dict(self) -> dict[str, Any]:
        """``{"llm_total": ..., "llm_by_stage": {...}, "llm_by_document": {...}}`` for manifest.json."""
        return {
            "llm_total": self.total().to_dict(),
            "llm_by_stage": {stage: c.to_dict() for stage, c in sorted(self.by_stage.items())},
            "llm_by_document": {doc: c.to_dict() for doc, c in sorted(self.by_doc.items())},
            "llm_limits": dict(sorted(self.limits.items())),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Accounting":
        """Inverse of :meth:`to_dict` (reads a shard's manifest section back)."""
        accounting = cls()
        accounting.by_stage = {k: Counts.from_dict(v) for k, v in data["llm_by_stage"].items()}
        accounting.by_doc = {k: Counts.from_dict(v) for k, v in data["llm_by_document"].items()}
        accounting.limits = Counter(data.get("llm_limits", {}))
        return accounting

    def __repr__(self) -> str:
        t = self.total()
        return (f"Accounting(stages={len(self.by_stage)}, documents={len(self.by_doc)}, calls={t.calls}, "
                f"cache_hits={t.cache_hits}, requests={t.requests}, cost_usd={t.cost_usd:.4f})")
