"""The fallback fit: cut several documents at chunk boundaries (Algorithm 2 as first written).

:class:`longctx.concat.plan.SamplePlanner` first looks for a whole-document fill, then for a fill
that cuts one document. Only when neither turns up within ``max_attempts`` draws (a handful of
documents, targets close to a document's length, chunks too coarse for the target: tiny corpora
and the demo) does it fall back to the rule here, and the sample is marked ``fit: "cuts"``:

* while over the target, drop the last chunk of the currently largest document (never its last
  question); then add back any chunk that still fits, and try giving a chunk back from one
  document where another can then grow by more;
* when chunks are too coarse for the target, grow one document by a chunk and drop question
  turns from the end of the sample until it fits (``n_qa_trimmed``; a document always keeps one
  question of its own);
* otherwise swap a document (the shortest for the longest unused when short; the least cuttable
  when over) and try again.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .plan_types import DocumentCurve, SampleFitError, SamplePlan

__all__ = ["ChunkCuts"]


class ChunkCuts:
    """Mixin of :class:`longctx.concat.plan.SamplePlanner`: the several-cuts fallback."""

    def _select(self, target: int, docs_per_sample: int | None, usage: np.ndarray,
                rng: np.random.Generator) -> list[int]:
        """Least-used documents first (random among equals): ``docs_per_sample`` of them, or
        documents until their whole cost reaches the target."""

        order = self._candidates(usage, rng, set())
        if docs_per_sample is not None:
            if len(order) < docs_per_sample:
                raise SampleFitError(f"only {len(order)} unused documents left for a sample of "
                                     f"{docs_per_sample} (reuse_documents: false)")
            return order[:docs_per_sample]
        chosen, total = [], self.layout.fixed_tokens
        for p in order:
            chosen.append(p)
            total += self.full_cost(p)
            if total >= target:
                break
        return chosen

    def _plan_with_cuts(self, target: int, docs_per_sample: int | None, usage: np.ndarray,
                        rng: np.random.Generator, coin_seed: int) -> SamplePlan:

        chosen = self._select(target, docs_per_sample, usage, rng)
        failures = []
        for attempt in range(1, self.max_attempts + 1):
            n = len(chosen)
            coins = self._coins(coin_seed, n)
            curves = []
            for slot, p in enumerate(chosen):
                doc = self.store.documents[p]
                take = self.n_diverse + self.n_revisit * int(coins[slot].sum())
                curves.append(self._curve(doc, slot + 1, rng.permutation(len(doc.diverse)), take))
            kept, total, reason = self._fit(curves, target)
            if not reason:
                return self._materialise(curves, kept, coins, total, target, attempt, "cuts")
            if reason == "short":  # one more chunk, then drop the sample's last questions to fit
                trimmed = self._overshoot_and_trim(curves, kept, coins, target, attempt)
                if trimmed is not None:
                    return trimmed
            failures.append(f"{reason} ({total:,} tokens from {n} documents)")
            others = self._candidates(usage, rng, set(chosen))
            if reason == "short":
                if docs_per_sample is None and others:
                    chosen = chosen + [others[0]]
                    continue
                longer = [p for p in others if self.full_cost(p) > min(self.full_cost(q) for q in chosen)]
                if not longer:
                    chosen = self._select(target, docs_per_sample, usage, rng)
                    continue
                shortest = min(range(n), key=lambda s: self.full_cost(chosen[s]))
                chosen[shortest] = max(longer, key=self.full_cost)
            else:
                if docs_per_sample is None and n > 1:
                    chosen = chosen[:-1]
                    continue
                if not others:
                    chosen = self._select(target, docs_per_sample, usage, rng)
                    continue
                stiff = max(range(n), key=lambda s: int(curves[s].cost[curves[s].k_min - 1]))
                chosen[stiff] = others[0]
        raise SampleFitError(
            f"no sample of {self.fill_fraction} x {target:,} to {target:,} tokens after "
            f"{len(failures)} attempt(s): {'; '.join(failures[-3:])}. Lower fill_fraction, use "
            f"finer chunks, or allow reuse_documents")


    def _fit(self, curves: list[DocumentCurve], target: int) -> tuple[list[int], int, str]:
        """Chunks kept per document and the total; reason is "" on success, else "short"/"over"."""
        kept = [c.doc.n_chunks for c in curves]
        total = self.layout.fixed_tokens + sum(int(c.cost[-1]) for c in curves)
        while total > target:
            cuttable = [i for i, c in enumerate(curves) if kept[i] > c.k_min]
            if not cuttable:
                return kept, total, "over"
            i = max(cuttable, key=lambda j: (int(curves[j].cost[kept[j] - 1]), -j))
            total -= int(curves[i].cost[kept[i] - 1] - curves[i].cost[kept[i] - 2])
            kept[i] -= 1
        total = self._fill_up(curves, kept, total, target)
        # Local search: give a chunk back from one document if another can then grow by more.
        improved = total < target
        while improved and total < target:
            improved = False
            for i, ci in enumerate(curves):
                if kept[i] <= ci.k_min:
                    continue
                trial = list(kept)
                trial[i] -= 1
                base = total - int(ci.cost[kept[i] - 1] - ci.cost[kept[i] - 2])
                grown = self._fill_up(curves, trial, base, target, skip=i)
                if grown > total:
                    kept[:], total, improved = trial, grown, True
                    break
        return kept, total, "" if total >= self.fill_fraction * target else "short"

    @staticmethod
    def _fill_up(curves: list[DocumentCurve], kept: list[int], total: int, target: int, skip: int = -1) -> int:
        """Add back, in place, whichever next chunk fits best until none fits; the new total."""
        while True:
            best, best_step = None, -1
            for i, c in enumerate(curves):
                if i != skip and kept[i] < c.doc.n_chunks:
                    step = int(c.cost[kept[i]] - c.cost[kept[i] - 1])
                    if total + step <= target and step > best_step:
                        best, best_step = i, step
            if best is None:
                return total
            kept[best] += 1
            total += best_step

    def _overshoot_and_trim(self, curves: list[DocumentCurve], kept: list[int], coins: np.ndarray,
                            target: int, attempt: int) -> SamplePlan | None:
        """Chunks come in steps too coarse for short targets: grow one document by a chunk, then
        drop question turns from the end of the sample (its last revisits, then the last
        document's own questions, never a document's last own question) until it fits."""
        best = None
        for i, c in enumerate(curves):
            if kept[i] >= c.doc.n_chunks:
                continue
            trial = list(kept)
            trial[i] += 1
            total = self.layout.fixed_tokens + sum(int(cv.cost[k - 1]) for cv, k in zip(curves, trial))
            plan = self._trim(self._materialise(curves, trial, coins, total, target, attempt, "cuts"),
                              target)
            if plan is not None and plan.n_tokens >= self.fill_fraction * target and (
                    best is None or plan.n_qa_trimmed < best.n_qa_trimmed):
                best = plan
        return best

    def _trim(self, plan: SamplePlan, target: int) -> SamplePlan | None:
        docs = {d.number: self.store.documents[d.position] for d in plan.documents}
        own = Counter(q.about for q in plan.questions if q.kind != "revisit")
        questions, total = list(plan.questions), plan.n_tokens
        while total > target:
            q = questions[-1]
            if q.kind != "revisit" and own[q.about] <= 1:
                return None
            own[q.about] -= q.kind != "revisit"
            total -= (self.layout.qa_turn_cost(docs[q.about], q.about)
                      + len(q.qa.question_ids) + len(q.qa.answer_ids))
            plan.n_answer_tokens -= len(q.qa.answer_ids) + 1
            questions.pop()
        plan.n_qa_trimmed = len(plan.questions) - len(questions)
        plan.questions, plan.n_tokens = questions, total
        plan.recount()
        return plan

