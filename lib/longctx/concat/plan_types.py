"""The data of a sample plan, shared by the planner and the modules it uses.

:mod:`longctx.concat.plan` makes :class:`SamplePlan` objects; :mod:`longctx.concat.layout` turns
them into chat turns and :mod:`longctx.concat.cuts` (the several-cuts fallback) makes and trims
them. The types live here so that those modules import them without importing the planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .qa_store import QA, Document

__all__ = ["DocumentCurve", "FITS", "LEVELS", "PlannedDocument", "QuestionTurn", "SampleFitError", "SamplePlan",
           "StageBudgetError"]


class StageBudgetError(ValueError):
    """The input cannot supply a stage: too few documents or tokens. Raised before any work."""


LEVELS = ("global", "section", "chunk", "diverse", "revisit")
FITS = ("whole", "one_cut", "cuts")


class SampleFitError(RuntimeError):
    """No document choice met the fill rule within ``max_attempts``."""


@dataclass
class PlannedDocument:
    position: int          # index in the QAStore
    number: int            # 1-based place in the sample ("Document 3")
    chunks_kept: int       # a prefix of the document's chunks
    n_chunks: int
    n_dropped: int         # the document's QA whose chunks were cut away
    n_tokens_cut: int = 0  # text tokens of the chunks cut away


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
    fit: str = "whole"          # "whole", "one_cut" or "cuts" (fallback): see the module docstring
    counts: dict[str, int] = field(default_factory=dict)   # kept turns by kind
    planned: dict[str, int] = field(default_factory=dict)  # by level, as if nothing were cut
    kept: dict[str, int] = field(default_factory=dict)     # by level, in the sample

    @property
    def n_documents_cut(self) -> int:
        return sum(d.chunks_kept < d.n_chunks for d in self.documents)

    @property
    def n_tokens_cut(self) -> int:
        return sum(d.n_tokens_cut for d in self.documents)

    def recount(self) -> None:
        """Set ``counts`` and ``kept`` from ``questions``."""
        self.counts = {k: 0 for k in ("hierarchical", "diverse", "revisit")}
        self.kept = {k: 0 for k in LEVELS}
        for q in self.questions:
            self.counts[q.kind] += 1
            self.kept[q.qa.label if q.kind == "hierarchical" else q.kind] += 1

    @property
    def revisit_distances(self) -> list[int]:
        return [q.after - q.about for q in self.questions if q.kind == "revisit"]


@dataclass
class DocumentCurve:
    """Cost of one document in one sample as a function of chunks kept (index k - 1)."""

    doc: Document
    number: int
    perm: np.ndarray        # diverse questions in draw order
    n_take: int             # diverse questions wanted: own + revisits
    cost: np.ndarray        # tokens at k chunks
    own: np.ndarray         # own questions surviving at k chunks
    k_min: int              # fewest chunks that keep one own question (0: none ever)
