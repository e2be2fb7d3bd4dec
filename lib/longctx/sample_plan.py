"""Algorithm 2: which documents, cut where, and which questions in what order, for one sample.

A plan is made before any document is tokenised, from exact token costs (:mod:`sample_layout`):

1. **Documents.** Candidates are ordered least-used first (random among equals). A stage with
   ``docs_per_sample`` takes that many; one without takes documents until their full cost reaches
   the target (our choice for the 180K stage). No document twice in one sample.
2. **Random draws.** For every pair of places (earlier ``i``, later ``j``) a coin with
   probability ``revisit_probability``, drawn once per sample: heads puts ``n_revisit`` questions
   about ``i`` after ``j``'s own questions. For each document a random order of its diverse
   questions: the first ``n_diverse`` that survive the cut follow the document, the next ones
   feed its revisits.
3. **Cuts.** With the draws fixed, a document's cost is a function of the chunks it keeps alone,
   so the sample length is ``fixed + sum_i cost_i(k_i)``. Start from whole documents; while over
   the target, drop the last chunk of the currently largest document (never its last question);
   then add back any chunk that still fits. A question survives a cut iff all its ``chunk_ids``
   are kept, so no question outlives its evidence.
4. **Fill rule.** Accept if ``fill_fraction * target <= length <= target``. When chunks are too
   coarse for the target (short demo targets), grow one document by a chunk and drop question
   turns from the end of the sample until it fits (counted as ``n_qa_trimmed``; a document
   always keeps one question of its own). Otherwise swap a document (the shortest for the
   longest unused when short; the least cuttable when over) and try again, up to
   ``max_attempts`` times.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .qa_store import QA, Document
from .sample_layout import SampleLayout

__all__ = ["PlannedDocument", "QuestionTurn", "SamplePlan", "SamplePlanner", "StageBudgetError",
           "SampleFitError"]


class StageBudgetError(ValueError):
    """The input cannot supply a stage: too few documents or tokens. Raised before any work."""


class SampleFitError(RuntimeError):
    """No document choice met the fill rule within ``max_attempts``."""


@dataclass
class PlannedDocument:
    position: int          # index in the QAStore
    number: int            # 1-based place in the sample ("Document 3")
    chunks_kept: int       # a prefix of the document's chunks
    n_chunks: int
    n_dropped: int         # the document's QA whose chunks were cut away


@dataclass
class QuestionTurn:
    about: int             # number of the document asked about
    after: int             # number of the document this turn follows
    kind: str              # "hierarchical", "diverse" or "revisit"
    qa: QA


@dataclass
class SamplePlan:
    documents: list[PlannedDocument]
    questions: list[QuestionTurn]
    n_tokens: int          # exact length of the assembled sample
    n_document_tokens: int
    n_answer_tokens: int   # answers + their <|eot_id|>
    target_tokens: int
    revisit_pairs: int
    revisit_drawn: int
    revisit_shortfall: int = 0  # revisit questions missing: the earlier document ran out of unused ones
    n_qa_trimmed: int = 0       # question turns dropped from the end to fit (short targets only)
    attempts: int = 1
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def revisit_distances(self) -> list[int]:
        return [q.after - q.about for q in self.questions if q.kind == "revisit"]


@dataclass
class _Curve:
    """Cost of one document in one sample as a function of chunks kept (index k - 1)."""

    doc: Document
    number: int
    perm: np.ndarray        # diverse questions in draw order
    n_take: int             # diverse questions wanted: own + revisits
    cost: np.ndarray        # tokens at k chunks
    own: np.ndarray         # own questions surviving at k chunks
    k_min: int              # fewest chunks that keep one own question (0: none ever)


class SamplePlanner:
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

    # ----------------------------------------------------------------- costs

    def _curve(self, doc: Document, number: int, perm: np.ndarray, n_take: int) -> _Curve:
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
        return _Curve(doc, number, perm, n_take, cost.astype(np.int64), own,
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

    def _select(self, target: int, docs_per_sample: int | None, usage: np.ndarray,
                rng: np.random.Generator) -> list[int]:
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

    def _fit(self, curves: list[_Curve], target: int) -> tuple[list[int], int, str]:
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
    def _fill_up(curves: list[_Curve], kept: list[int], total: int, target: int, skip: int = -1) -> int:
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

    def plan(self, target: int, docs_per_sample: int | None, usage: np.ndarray,
             rng: np.random.Generator) -> SamplePlan:
        """One sample's plan; ``usage`` (uses per document so far) is read, not updated."""
        chosen = self._select(target, docs_per_sample, usage, rng)
        # The coins are drawn once per sample, not per attempt: retrying after a failed fit must
        # not favour coin outcomes that happen to fit (that would bias the revisit frequency).
        coin_seed = int(rng.integers(2**63))
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
                return self._materialise(curves, kept, coins, total, target, attempt)
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

    def _overshoot_and_trim(self, curves: list[_Curve], kept: list[int], coins: np.ndarray,
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
            plan = self._trim(self._materialise(curves, trial, coins, total, target, attempt), target)
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
            plan.counts[q.kind] -= 1
            plan.n_answer_tokens -= len(q.qa.answer_ids) + 1
            questions.pop()
        plan.n_qa_trimmed = len(plan.questions) - len(questions)
        plan.questions, plan.n_tokens = questions, total
        return plan

    def _coins(self, seed: int, n: int) -> np.ndarray:
        """``coins[i, j]`` (i < j): revisit document i after document j. Pairs are drawn in the
        order (0,1), (0,2), (1,2), (0,3), ... so a sample that gains a document keeps its coins."""
        heads = np.random.default_rng(seed).random(n * (n - 1) // 2) < self.revisit_probability
        coins = np.zeros((n, n), dtype=bool)
        jj, ii = np.array([(j, i) for j in range(n) for i in range(j)], dtype=np.int64).reshape(-1, 2).T
        coins[ii, jj] = heads
        return coins

    def _materialise(self, curves: list[_Curve], kept: list[int], coins: np.ndarray, total: int,
                     target: int, attempts: int) -> SamplePlan:
        documents, own, pools = [], [], []
        counts = {"hierarchical": 0, "diverse": 0, "revisit": 0}
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
            documents.append(PlannedDocument(doc.position, c.number, k, doc.n_chunks, n_all - n_alive))
            n_doc_tokens += int(doc.chunk_token_ends[k - 1])
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
        for q in questions:
            counts[q.kind] += 1
        n_answer = sum(len(q.qa.answer_ids) + 1 for q in questions)
        n = len(curves)
        return SamplePlan(documents, questions, total, n_doc_tokens, n_answer, target,
                          revisit_pairs=n * (n - 1) // 2, revisit_drawn=int(coins.sum()),
                          revisit_shortfall=shortfall, attempts=attempts, counts=counts)
