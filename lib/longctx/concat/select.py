"""Choosing a sample's documents by length, so that whole documents fill the target.

A global question is grounded on every chunk of its document, so any cut of a document loses
its global questions (and most section questions). The planner therefore first looks for a set
of *whole* documents whose total cost lands in the fill window
``[fill_fraction * target, target]``, and cuts (at most one document) only when none is found.

Costs here are estimates, one vector operation over the candidate pool: a document's header,
text, separator and hierarchical turns are exact; its diverse turns (which depend on the random
draw order of its diverse questions) are estimated at their mean size. :mod:`longctx.concat.plan`
computes the exact cost of the chosen set and repairs the last choice if the estimate missed.

Slots are filled in order. Before the last slot, a document is taken at random (least-used
first) among those that leave a remainder the other slots can plausibly fill: between
``slots_left x q_lo`` and ``slots_left x q_hi``, where ``q_lo`` / ``q_hi`` are the lower and upper
quartiles of the pool's costs. The last slot takes a document whose cost lands the total in the
middle part of the fill window. ``docs_per_sample: null`` (the 180K stage) adds documents the same
way until one lands in the window.
"""

from __future__ import annotations

import math

import numpy as np

from .layout import SampleLayout
from .qa_store import QAStore

__all__ = ["LengthIndex"]

_WINDOW_MARGIN = 0.2  # aim at the middle 60 % of the fill window: room for estimate errors
_NEAR = 8             # when no document lands, draw among this many nearest misses


class LengthIndex:
    """Per usable document: estimated whole-document cost as a function of diverse questions taken."""

    def __init__(self, layout: SampleLayout, usable: list[int], n_diverse: int, n_revisit: int):
        self.store: QAStore = layout.store
        self.n_diverse = n_diverse
        self.n_revisit = n_revisit
        self.positions = np.asarray(usable, dtype=np.int64)
        n = len(self.store)
        self.base = np.zeros(n, dtype=np.float64)   # header + text + separator + hierarchical turns
        self.unit = np.zeros(n, dtype=np.float64)   # mean tokens of one diverse turn
        self.n_div = np.zeros(n, dtype=np.int64)    # diverse questions available
        for p in usable:
            doc = self.store.documents[p]
            _, h_size, _, d_size = layout.qa_arrays(doc)
            turn = layout.qa_turn_cost(doc, 1)
            self.base[p] = layout.document_costs(doc, 1)[-1] + h_size.sum() + turn * len(h_size)
            self.unit[p] = (d_size.mean() + turn) if len(d_size) else 0.0
            self.n_div[p] = len(d_size)

    def cost(self, positions: np.ndarray, take: int | np.ndarray) -> np.ndarray:
        """Estimated tokens of whole documents ``positions`` taking ``take`` diverse questions."""
        return self.base[positions] + np.minimum(take, self.n_div[positions]) * self.unit[positions]

    # ----------------------------------------------------------------- choosing

    @staticmethod
    def _pick(pool: np.ndarray, usage: np.ndarray, ok: np.ndarray, rng: np.random.Generator) -> int:
        """A random one of the least-used pool documents where ``ok``; -1 if none."""
        idx = np.flatnonzero(ok)
        if not len(idx):
            return -1
        u = usage[pool[idx]]
        idx = idx[u == u.min()]
        return int(pool[idx[rng.integers(len(idx))]])

    @classmethod
    def _pick_near(cls, pool: np.ndarray, usage: np.ndarray, free: np.ndarray, gap: np.ndarray,
                   rng: np.random.Generator) -> int:
        """A random one of the ``_NEAR`` free documents of smallest ``gap`` (least-used first), so
        that a retried sample does not draw the same documents again."""
        gap = np.where(free, gap, np.inf)
        near = np.argsort(gap, kind="stable")[:_NEAR]
        ok = np.zeros(len(pool), dtype=bool)
        ok[near[np.isfinite(gap[near])]] = True
        return cls._pick(pool, usage, ok, rng)

    def choose(self, pool: np.ndarray, usage: np.ndarray, fixed: int, target: int, fill_fraction: float,
               n_docs: int | None, coins_for, rng: np.random.Generator) -> list[int]:
        """Documents for one sample (in sample order), aiming at a whole-document fill.

        ``pool``: candidate positions (usable, allowed by reuse rules); ``coins_for(n)``: the
        sample's revisit coins for ``n`` documents (prefix-stable), which set how many diverse
        questions each slot takes. May return a set whose estimate misses the window (then the
        caller repairs or cuts)."""
        lo, hi = math.ceil(fill_fraction * target), target
        aim_lo = lo + _WINDOW_MARGIN * (hi - lo)
        aim_hi = hi - _WINDOW_MARGIN * (hi - lo)
        free = np.ones(len(pool), dtype=bool)
        chosen: list[int] = []
        typical = self.cost(pool, self.n_diverse) if len(pool) else np.zeros(0)
        q_lo, q_hi = (np.quantile(typical, [0.25, 0.75]) if len(typical) else (0.0, 0.0))
        limit = n_docs if n_docs is not None else len(pool)
        while len(chosen) < limit:
            s = len(chosen)
            coins = coins_for(n_docs if n_docs is not None else s + 1)
            takes = self.n_diverse + self.n_revisit * coins.sum(axis=1)
            used = fixed + sum(float(self.cost(np.array([p]), takes[i])[0]) for i, p in enumerate(chosen))
            cand = self.cost(pool, takes[s])
            slots_after = None if n_docs is None else n_docs - s - 1
            if slots_after:
                rest = (lo + hi) / 2 - used - cand
                ok = free & (rest >= slots_after * q_lo) & (rest <= slots_after * q_hi)
                p = self._pick(pool, usage, ok, rng)
                if p < 0:  # nothing typical: one of those leaving the others the most typical share
                    p = self._pick_near(pool, usage, free, np.abs(rest / slots_after - (q_lo + q_hi) / 2), rng)
            else:
                p = self._pick(pool, usage, free & (cand >= aim_lo - used) & (cand <= aim_hi - used), rng)
                if p < 0:
                    p = self._pick(pool, usage, free & (cand >= lo - used) & (cand <= hi - used), rng)
                if p >= 0:  # lands in the window: done
                    chosen.append(p)
                    return chosen
                if slots_after == 0:  # the last slot and nothing lands: one of the closest to the middle
                    p = self._pick_near(pool, usage, free, np.abs(cand - ((lo + hi) / 2 - used)), rng)
                    return chosen + [p] if p >= 0 else chosen
                # fill to target: add a document that leaves room for a further one
                rest = (lo + hi) / 2 - used - cand
                p = self._pick(pool, usage, free & (rest >= q_lo), rng)
                if p < 0:
                    p = self._pick(pool, usage, free & (rest >= 0), rng)
                if p < 0:
                    return chosen
            chosen.append(p)
            free &= pool != p
        return chosen
