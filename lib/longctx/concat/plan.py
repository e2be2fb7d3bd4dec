"""Algorithm 2: which documents, cut where, and which questions in what order, for one sample.

A plan is made before any document is tokenised, from exact token costs (:mod:`longctx.concat.layout`):

1. **Random draws.** For every pair of places (earlier ``i``, later ``j``) a coin with
   probability ``revisit_probability``, drawn once per sample: heads puts ``n_revisit`` questions
   about ``i`` after ``j``'s own questions. For each document a random order of its diverse
   questions: the first ``n_diverse`` that survive a cut follow the document, the next ones feed
   its revisits.
2. **Documents, by length.** A global question is grounded on every chunk of its document, so
   a cut loses it. Documents are chosen so that *whole* documents fill the sample
   (:mod:`longctx.concat.select`): ``fill_fraction * target <= length <= target``. A stage with
   ``docs_per_sample`` takes that many; one without adds documents until the window is reached
   (our choice for the 180K stage). Least-used documents first, *before* fit: the documents used
   fewest times so far are tried on their own (whole, else one cut) and a document used once
   more joins only when they cannot fill the sample, so within a stage every document that can
   fill a slot is used once before any is used twice. No document twice in a sample.
3. **At most one cut.** If no whole-document set lands in the window, the sample cuts one
   document at a chunk boundary: the one whose cut loses the fewest global and section
   questions (then questions, then tokens). A question survives a cut iff all its
   ``chunk_ids`` are kept, so no question outlives its evidence.
4. **Fallback.** Only when ``max_attempts`` draws find neither (a few short documents, targets
   near a document's length, chunks too coarse) does the older several-cuts rule of
   :mod:`longctx.concat.cuts` apply; such samples say ``fit: "cuts"``.

Every plan counts, by level (global, section, chunk, diverse, revisit), the questions Algorithm 2
would ask of its documents uncut (``planned``) and those the sample keeps (``kept``).
"""

from __future__ import annotations

import math

import numpy as np

from .cuts import ChunkCuts
from .layout import SampleLayout
from .plan_types import (FITS, LEVELS, DocumentCurve, PlannedDocument, QuestionTurn, SampleFitError, SamplePlan,
                         StageBudgetError)
from .qa_store import Document
from .select import LengthIndex

# The plan's data types are defined in plan_types and offered here, where callers look for them.
__all__ = ["FITS", "LEVELS", "PlannedDocument", "QuestionTurn", "SamplePlan", "SamplePlanner", "StageBudgetError",
           "SampleFitError"]


_REPAIR_TRIES = 12  # exact costs tried when the estimated choice missed the window


class SamplePlanner(ChunkCuts):
    """Makes :class:`SamplePlan` s for one stage's samples; see the module docstring."""

    def __init__(self, layout: SampleLayout, *, n_diverse: int, revisit_probability: float,
                 n_revisit: int, fill_fraction: float, reuse_documents: bool, max_attempts: int):
        self.layout = layout
        self.store = layout.store
        self.n_diverse = n_diverse
        self.revisit_probability = revisit_probability
        self.n_revisit = n_revisit
        self.fill_fraction = fill_fraction
        self.reuse_documents = reuse_documents
        self.max_attempts = max_attempts
        self._full: dict[tuple[int, int], int] = {}
        identity = [np.arange(len(d.diverse)) for d in self.store.documents]
        self.usable = [d.position for d in self.store.documents
                       if self._curve(d, 1, identity[d.position], n_diverse).k_min > 0]
        self.index = LengthIndex(layout, self.usable, n_diverse, n_revisit)

    # ----------------------------------------------------------------- costs

    def _curve(self, doc: Document, number: int, perm: np.ndarray, n_take: int) -> DocumentCurve:
        layout = self.layout
        h_last, h_size, d_last, d_size = layout.qa_arrays(doc)
        turn = layout.qa_turn_cost(doc, number)
        n_chunks = doc.n_chunks
        hier_cost = np.cumsum(np.bincount(h_last, weights=h_size + turn, minlength=n_chunks))
        hier_n = np.cumsum(np.bincount(h_last, minlength=n_chunks))
        kept = np.arange(1, n_chunks + 1)
        eligible = d_last[perm][None, :] < kept[:, None]           # (k, draw order)
        taken = eligible & (np.cumsum(eligible, axis=1) <= n_take)
        div_cost = (taken * (d_size[perm] + turn)[None, :]).sum(axis=1)
        own = hier_n + np.minimum(eligible.sum(axis=1), self.n_diverse)
        cost = layout.document_costs(doc, number) + hier_cost.astype(np.int64) + div_cost
        nonzero = np.flatnonzero(own > 0)
        return DocumentCurve(doc, number, perm, n_take, cost.astype(np.int64), own,
                      int(nonzero[0]) + 1 if len(nonzero) else 0)

    def full_cost(self, position: int, n_others: int = 0) -> int:
        """Tokens of a whole document with its questions (and revisits of it by ``n_others``
        later documents, all taken), as document 1. Used to choose documents by length."""
        key = (position, n_others)
        if key not in self._full:
            doc = self.store.documents[position]
            take = self.n_diverse + self.n_revisit * n_others
            self._full[key] = int(self._curve(doc, 1, np.arange(len(doc.diverse)), take).cost[-1])
        return self._full[key]

    def min_cost(self, position: int) -> int:
        doc = self.store.documents[position]
        curve = self._curve(doc, 1, np.arange(len(doc.diverse)), self.n_diverse)
        return int(curve.cost[curve.k_min - 1])

    # ----------------------------------------------------------------- checks before any work

    def check_stage(self, name: str, target: int, n_samples: int, docs_per_sample: int | None) -> None:
        """Raise :class:`StageBudgetError` (with the numbers) if the input cannot supply the stage."""
        n_file, usable = len(self.store), self.usable
        have = (f"{self.store.path} has {len(usable)} usable document(s)"
                + (f" ({n_file} in the file; a document without a question is unusable)"
                   if len(usable) != n_file else ""))
        need_fill = math.ceil(self.fill_fraction * target)
        if docs_per_sample is not None:
            if docs_per_sample > len(usable):
                raise StageBudgetError(
                    f"stage {name!r}: needs {docs_per_sample} distinct documents per sample "
                    f"(no document twice in one sample); {have}")
            if not self.reuse_documents and n_samples * docs_per_sample > len(usable):
                raise StageBudgetError(
                    f"stage {name!r}: needs {n_samples * docs_per_sample:,} documents "
                    f"({n_samples:,} samples x {docs_per_sample} documents, reuse_documents: false); "
                    f"{have}")
            most = sorted((self.full_cost(p, docs_per_sample - 1) for p in usable), reverse=True)
            best = self.layout.fixed_tokens + sum(most[:docs_per_sample])
            if best < need_fill:
                raise StageBudgetError(
                    f"stage {name!r}: a sample needs at least {need_fill:,} tokens (fill_fraction "
                    f"{self.fill_fraction} x target {target:,}) from {docs_per_sample} documents, but "
                    f"the {docs_per_sample} longest give at most {best:,} tokens with their questions; "
                    f"{have} totalling {sum(self.store.documents[p].n_tokens for p in usable):,} "
                    f"text tokens (use longer documents, more documents, or a smaller target)")
            least = sorted(self.min_cost(p) for p in usable)
            smallest = self.layout.fixed_tokens + sum(least[:docs_per_sample])
            if smallest > target:
                raise StageBudgetError(
                    f"stage {name!r}: even cut to their first chunk, the {docs_per_sample} smallest "
                    f"documents need {smallest:,} tokens, over the target {target:,}")
        else:
            total = self.layout.fixed_tokens + sum(self.full_cost(p, len(usable) - 1) for p in usable)
            need = need_fill if self.reuse_documents else need_fill * n_samples
            if total < need:
                what = "a sample" if self.reuse_documents else f"{n_samples:,} samples without reuse"
                raise StageBudgetError(
                    f"stage {name!r}: {what} needs at least {need:,} tokens of documents and "
                    f"questions (fill_fraction {self.fill_fraction} x target {target:,}); {have} "
                    f"giving at most {total:,}")

    # ----------------------------------------------------------------- planning

    def _candidates(self, usage: np.ndarray, rng: np.random.Generator, exclude: set[int]) -> list[int]:
        pool = np.array([p for p in self.usable if p not in exclude
                         and (self.reuse_documents or usage[p] == 0)], dtype=np.int64)
        if not len(pool):
            return []
        keys = rng.random(len(pool))
        return [int(p) for p in pool[np.lexsort((keys, usage[pool]))]]

    def plan(self, target: int, docs_per_sample: int | None, usage: np.ndarray,
             rng: np.random.Generator) -> SamplePlan:
        """One sample's plan; ``usage`` (uses per document so far) is read, not updated."""
        # The coins are drawn once per sample, not per attempt: retrying after a failed fit must
        # not favour coin outcomes that happen to fit (that would bias the revisit frequency).
        coin_seed = int(rng.integers(2**63))
        pool_all = np.array([p for p in self.usable if self.reuse_documents or usage[p] == 0], dtype=np.int64)
        if docs_per_sample is not None and len(pool_all) < docs_per_sample:
            raise SampleFitError(f"only {len(pool_all)} unused documents left for a sample of "
                                 f"{docs_per_sample} (reuse_documents: false)")
        lo, hi = math.ceil(self.fill_fraction * target), target
        # Least used first, before fit: the documents used fewest times so far are tried on their
        # own (a whole fill, else one cut); documents used once more join only when those cannot
        # fill the sample. So within a stage every document that can fill a slot is used once
        # before any is used twice, and two samples are not copies while unused documents remain.
        # (Preferring a whole fill from reused documents would keep more global questions in
        # a corpus of a few documents, but repeat the same sample: measured, see the tests.)
        for tier in np.unique(usage[pool_all]):
            pool = pool_all[usage[pool_all] <= tier]
            if not self._could_fill(pool, docs_per_sample, lo):
                continue
            plan = self._fit_from(pool, usage, target, docs_per_sample, coin_seed, lo, hi, rng)
            if plan is not None:
                return plan
        return self._plan_with_cuts(target, docs_per_sample, usage, rng, coin_seed)

    def _could_fill(self, pool: np.ndarray, docs_per_sample: int | None, lo: int) -> bool:
        """Whether ``pool`` has enough documents, long enough (estimated), to reach ``lo`` tokens."""
        if docs_per_sample is not None and len(pool) < docs_per_sample:
            return False
        costs = np.sort(self.index.cost(pool, self.n_diverse))[::-1]
        return self.layout.fixed_tokens + float(costs[:docs_per_sample].sum()) >= lo

    def _fit_from(self, pool: np.ndarray, usage: np.ndarray, target: int, docs_per_sample: int | None,
                  coin_seed: int, lo: int, hi: int, rng: np.random.Generator) -> SamplePlan | None:
        """A whole-document or one-cut plan from ``pool``, or None after ``max_attempts`` draws."""
        for attempt in range(1, self.max_attempts + 1):
            chosen = self.index.choose(pool, usage, self.layout.fixed_tokens, target, self.fill_fraction,
                                       docs_per_sample, lambda n: self._coins(coin_seed, n), rng)
            if not chosen:
                break
            coins = self._coins(coin_seed, len(chosen))
            curves = [self._slot_curve(p, slot, coins, rng) for slot, p in enumerate(chosen)]
            total = self.layout.fixed_tokens + sum(int(c.cost[-1]) for c in curves)
            if not lo <= total <= hi:
                total = self._repair_last(curves, chosen, pool, usage, coins, lo, hi, rng)
            kept = [c.doc.n_chunks for c in curves]
            if lo <= total <= hi:
                return self._materialise(curves, kept, coins, total, target, attempt, "whole")
            one = self._one_cut(curves, total, lo, hi)
            if one is not None:
                kept[one[0]] = one[1]
                total = self.layout.fixed_tokens + sum(int(c.cost[k - 1]) for c, k in zip(curves, kept))
                return self._materialise(curves, kept, coins, total, target, attempt, "one_cut")
        return None

    def _slot_curve(self, position: int, slot: int, coins: np.ndarray, rng: np.random.Generator) -> DocumentCurve:
        doc = self.store.documents[position]
        take = self.n_diverse + self.n_revisit * int(coins[slot].sum())
        return self._curve(doc, slot + 1, rng.permutation(len(doc.diverse)), take)

    def _repair_last(self, curves: list[DocumentCurve], chosen: list[int], pool: np.ndarray, usage: np.ndarray,
                     coins: np.ndarray, lo: int, hi: int, rng: np.random.Generator) -> int:
        """Estimates missed the window: try, with exact costs, the unchosen documents whose
        estimate is nearest what the last slot needs; replace it (in place) by the first that
        lands. Returns the (possibly new) exact total."""
        last = len(curves) - 1
        rest = self.layout.fixed_tokens + sum(int(c.cost[-1]) for c in curves[:last])
        need = (lo + hi) / 2 - rest
        others = pool[~np.isin(pool, chosen)]
        if len(others):
            est = self.index.cost(others, self.n_diverse + self.n_revisit * int(coins[last].sum()))
            order = np.lexsort((np.abs(est - need), usage[others]))[:_REPAIR_TRIES]
            for p in others[order]:
                curve = self._slot_curve(int(p), last, coins, rng)
                if lo <= rest + int(curve.cost[-1]) <= hi:
                    curves[last], chosen[last] = curve, int(p)
                    break
        return rest + int(curves[last].cost[-1])

    def _one_cut(self, curves: list[DocumentCurve], total: int, lo: int, hi: int) -> tuple[int, int] | None:
        """(document, chunks kept) of the single cut that lands in the window and loses the
        fewest global and section questions, then questions, then tokens; None if none does."""
        best, best_key = None, None
        for i, c in enumerate(curves):
            others = total - int(c.cost[-1])
            ks = np.flatnonzero((c.cost[:-1] + others >= lo) & (c.cost[:-1] + others <= hi)) + 1
            ks = ks[ks >= max(c.k_min, 1)] if c.k_min else ks[:0]
            if not len(ks):
                continue
            k = int(ks[-1])
            lost_top = sum(q.last_chunk >= k and q.label in ("global", "section") for q in c.doc.hierarchical)
            lost = sum(q.last_chunk >= k for q in c.doc.hierarchical + c.doc.diverse)
            key = (lost_top, lost, int(c.doc.chunk_token_ends[-1] - c.doc.chunk_token_ends[k - 1]))
            if best_key is None or key < best_key:
                best, best_key = (i, k), key
        return best

    def _coins(self, seed: int, n: int) -> np.ndarray:
        """``coins[i, j]`` (i < j): revisit document i after document j. Pairs are drawn in the
        order (0,1), (0,2), (1,2), (0,3), ... so a sample that gains a document keeps its coins."""
        heads = np.random.default_rng(seed).random(n * (n - 1) // 2) < self.revisit_probability
        coins = np.zeros((n, n), dtype=bool)
        jj, ii = np.array([(j, i) for j in range(n) for i in range(j)], dtype=np.int64).reshape(-1, 2).T
        coins[ii, jj] = heads
        return coins

    def _materialise(self, curves: list[DocumentCurve], kept: list[int], coins: np.ndarray, total: int,
                     target: int, attempts: int, fit: str) -> SamplePlan:
        documents, own, pools = [], [], []
        planned = {k: 0 for k in LEVELS}
        n_doc_tokens = 0
        for c, k in zip(curves, kept):
            doc = c.doc
            hier = [q for q in doc.hierarchical if q.last_chunk < k]
            eligible = [doc.diverse[i] for i in c.perm if doc.diverse[i].last_chunk < k]
            mine = sorted(eligible[:self.n_diverse], key=lambda q: q.index)
            own.append([("hierarchical", q) for q in hier] + [("diverse", q) for q in mine])
            pools.append(eligible[self.n_diverse:c.n_take])
            n_all = len(doc.hierarchical) + len(doc.diverse)
            n_alive = len(hier) + sum(q.last_chunk < k for q in doc.diverse)
            end = int(doc.chunk_token_ends[k - 1])
            documents.append(PlannedDocument(doc.position, c.number, k, doc.n_chunks, n_all - n_alive,
                                             int(doc.chunk_token_ends[-1]) - end))
            n_doc_tokens += end
            for q in doc.hierarchical:
                planned[q.label] += 1
            planned["diverse"] += min(self.n_diverse, len(doc.diverse))
        questions, shortfall = [], 0
        for j, c in enumerate(curves):
            assert own[j], "a planned document without a question of its own"
            questions += [QuestionTurn(c.number, c.number, kind, q) for kind, q in own[j]]
            for i in range(j):
                if coins[i, j]:
                    group, pools[i] = pools[i][:self.n_revisit], pools[i][self.n_revisit:]
                    shortfall += self.n_revisit - len(group)
                    questions += [QuestionTurn(curves[i].number, c.number, "revisit", q)
                                  for q in sorted(group, key=lambda q: q.index)]
        n_answer = sum(len(q.qa.answer_ids) + 1 for q in questions)
        n = len(curves)
        planned["revisit"] = self.n_revisit * int(coins.sum())
        plan = SamplePlan(documents, questions, total, n_doc_tokens, n_answer, target,
                          revisit_pairs=n * (n - 1) // 2, revisit_drawn=int(coins.sum()),
                          revisit_shortfall=shortfall, attempts=attempts, fit=fit, planned=planned)
        plan.recount()
        return plan
