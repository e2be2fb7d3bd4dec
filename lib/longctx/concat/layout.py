"""How one concatenated sample is laid out as a Llama-3.1 chat, and what each part costs in tokens.

Layout ``interleaved`` (default; Algorithm 2 of the paper)::

    system  Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n<system_prompt>
            (Llama-3.1's stock date lines, always; the prompt may be empty)
    user    Document 1: <title>\\n\\n<text of document 1>\\n\\n
            Question about Document 1 (<title>): <first question of document 1>
    assistant  <answer>
    user    Question about Document 1 (<title>): <next question>
    assistant  <answer>
    ...     (hierarchical questions in stage-1 order, then the diverse ones)
    user    Document 2: <title>\\n\\n<text of document 2>\\n\\n
            Question about Document 2 (<title>): <first question of document 2>
    ...     (document 2's questions, then for each earlier document, with probability
             revisit_probability, n_revisit more questions about it, named as such)

A document is not a turn of its own: it opens the user turn of its first question, so no
made-up assistant acknowledgement is needed and every assistant turn is a real answer. Layout
``documents_first`` (ablation) puts every document into the first user turn, then asks the same
questions in the same order.

The ``\\n\\n`` after a document is left out when the kept text already ends with a blank line.
Every part's token count is known before any document is tokenised, so :class:`SampleLayout`
gives exact sample lengths for planning, and :meth:`SampleLayout.turns` assembles the pieces.
"""

from __future__ import annotations

import numpy as np

from .chat import Llama3Chat, Turn
from .plan_types import SamplePlan
from .qa_store import QA, Document, QAStore

__all__ = ["SampleLayout", "LAYOUTS"]

LAYOUTS = ("interleaved", "documents_first")
SEPARATOR = "\n\n"  # between a document's text and the question that follows it


class SampleLayout:
    """Token pieces and token costs of the parts of a sample, cached by text."""

    def __init__(self, store: QAStore, *, system_prompt: str, document_header: str,
                 question_prefix: str, layout: str = "interleaved"):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
        self.store = store
        self.chat = Llama3Chat(store.tokenizer)
        self.system_prompt = system_prompt.strip()
        self.document_header = document_header
        self.question_prefix = question_prefix
        self.layout = layout
        self._ids: dict[str, np.ndarray] = {}
        self._qa_arrays: dict[int, tuple[np.ndarray, ...]] = {}
        self.system_text = self.chat.system_text(self.system_prompt)
        self.fixed_tokens = 1 + self.chat.turn_overhead("system") + len(self.ids(self.system_text))
        # every question turn costs a user turn + an assistant turn around its own text
        self.qa_turn_overhead = self.chat.turn_overhead("user") + self.chat.turn_overhead("assistant")

    # ----------------------------------------------------------------- texts and their ids

    def ids(self, text: str) -> np.ndarray:
        """Token ids of a short layout text (headers, prefixes), tokenised once."""
        if text not in self._ids:
            self._ids[text] = np.asarray(self.store.tokenizer.encode(text), dtype=np.int32)
        return self._ids[text]

    def header_text(self, number: int, title: str) -> str:
        return self.document_header.format(number=number, title=title) + "\n\n"

    def prefix_text(self, number: int, title: str) -> str:
        return self.question_prefix.format(number=number, title=title)

    @staticmethod
    def separator_text(doc: Document, chunks_kept: int) -> str:
        return "" if doc.chunk_ends_paragraph[chunks_kept - 1] else SEPARATOR

    # ----------------------------------------------------------------- costs

    def qa_arrays(self, doc: Document) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(last chunk, question+answer tokens) for the hierarchical and the diverse QA of ``doc``."""
        if doc.position not in self._qa_arrays:
            def arrays(qas: list[QA]):
                last = np.fromiter((q.last_chunk for q in qas), dtype=np.int64, count=len(qas))
                size = np.fromiter((len(q.question_ids) + len(q.answer_ids) for q in qas),
                                   dtype=np.int64, count=len(qas))
                return last, size
            self._qa_arrays[doc.position] = (*arrays(doc.hierarchical), *arrays(doc.diverse))
        return self._qa_arrays[doc.position]

    def document_costs(self, doc: Document, number: int) -> np.ndarray:
        """Tokens of header + text + separator when keeping ``k`` chunks, at index ``k - 1``."""
        header = len(self.ids(self.header_text(number, doc.title)))
        sep = np.where(doc.chunk_ends_paragraph, 0, len(self.ids(SEPARATOR)))
        return header + doc.chunk_token_ends + sep

    def qa_turn_cost(self, doc: Document, number: int) -> int:
        """Tokens a question turn about ``doc`` adds besides its question and answer text."""
        return self.qa_turn_overhead + len(self.ids(self.prefix_text(number, doc.title)))

    # ----------------------------------------------------------------- assembly

    def document_pieces(self, doc: Document, number: int, chunks_kept: int,
                        with_text: bool) -> tuple[list[np.ndarray], list[str] | None]:
        end = int(doc.chunk_token_ends[chunks_kept - 1])
        header = self.header_text(number, doc.title)
        sep = self.separator_text(doc, chunks_kept)
        pieces = [self.ids(header), self.store.document_ids(doc.position, upto=end)[:end]]
        if sep:
            pieces.append(self.ids(sep))
        texts = None
        if with_text:
            body = self.store.document_text(doc.position)[:int(doc.chunk_char_ends[chunks_kept - 1])]
            texts = [header, body] + ([sep] if sep else [])
        return pieces, texts

    def turns(self, plan: SamplePlan, with_text: bool = False) -> list[Turn]:
        """The chat turns of ``plan``; with ``with_text`` each turn also carries its piece texts."""
        turns: list[Turn] = []
        turns.append(Turn("system", [self.ids(self.system_text)], [self.system_text] if with_text else None))
        pending: list[np.ndarray] = []
        pending_text: list[str] = []
        docs = {d.number: d for d in plan.documents}

        def add_document(number: int) -> None:
            planned = docs[number]
            pieces, texts = self.document_pieces(self.store.documents[planned.position], number,
                                                  planned.chunks_kept, with_text)
            pending.extend(pieces)
            pending_text.extend(texts or [])

        if self.layout == "documents_first":
            for planned in plan.documents:
                add_document(planned.number)
        placed = set()
        for q in plan.questions:
            if self.layout == "interleaved" and q.after not in placed:
                add_document(q.after)
                placed.add(q.after)
            about = self.store.documents[docs[q.about].position]
            prefix = self.prefix_text(q.about, about.title)
            pieces = pending + [self.ids(prefix), q.qa.question_ids]
            texts = pending_text + [prefix, " " + q.qa.question] if with_text else None
            turns.append(Turn("user", pieces, texts))
            turns.append(Turn("assistant", [q.qa.answer_ids], [q.qa.answer] if with_text else None))
            pending, pending_text = [], []
        if pending:  # the planner never leaves a document without a question; kept for safety
            turns.append(Turn("user", pending, pending_text if with_text else None))
        return turns
