"""Llama-3.1 chat turns -> token ids and answer-only labels, assembled from pre-tokenised pieces.

A turn is a role and a list of *pieces*, each an array of token ids that was tokenised once
(a document, a question, an answer, a header line). :class:`Llama3Chat` lays them out exactly
as Llama-3.1's chat template does::

    <|begin_of_text|>
    <|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\\n\\n{user}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n{answer}<|eot_id|>
    ...

The system turn always opens with Llama-3.1's date lines (:data:`LLAMA31_SYSTEM_PREAMBLE`),
exactly as the stock Hugging Face template of Llama-3.1-Instruct writes them (with the
template's default date) before the system message, and is present even when the system
message is empty. Evaluation renders prompts through the model's own (stock) template
(``longctx.eval.backends``), so training samples and evaluation prompts share one system header;
``tests/test_concatenate_template.py`` checks our ids against ``apply_chat_template``.

Labels are spans by construction: the content of each assistant turn and its ``<|eot_id|>``;
every header, special token, system and user token is masked. Because special tokens split the
text, ids built piece by piece equal the ids of the rendered text wherever a piece boundary is
also a boundary of the tokenizer's pre-tokenisation; :meth:`Llama3Chat.render_text` gives that
rendered text for comparison (see ``tests/test_concatenate_joins.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.tokenizer import Tokenizer
from .samples import IGNORE_INDEX

__all__ = ["Turn", "EncodedChat", "Llama3Chat", "ROLES", "LLAMA31_SYSTEM_PREAMBLE"]

ROLES = ("system", "user", "assistant")

# What Llama-3.1's stock chat template writes at the start of every system turn (no tools, the
# template's default date_string): the model was instruction-tuned with these lines.
LLAMA31_SYSTEM_PREAMBLE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


@dataclass
class Turn:
    """One chat message: ``role`` and its content as token-id pieces (joined without separator).

    ``texts`` optionally holds the text of each piece, used only to render the chat as text.
    """

    role: str
    pieces: list[np.ndarray]
    texts: list[str] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown chat role {self.role!r}; expected one of {ROLES}")

    @property
    def n_content_tokens(self) -> int:
        return int(sum(len(p) for p in self.pieces))


@dataclass
class EncodedChat:
    """Token ids of a chat and its loss spans ``[label_starts[i], label_ends[i])``."""

    input_ids: np.ndarray            # int32
    label_starts: np.ndarray         # int32
    label_ends: np.ndarray           # int32
    piece_starts: list[int] = field(default_factory=list)  # offset of every content piece

    @property
    def labels(self) -> np.ndarray:
        """Full unshifted labels (int64): input ids in answer spans, -100 elsewhere."""
        labels = np.full(len(self.input_ids), IGNORE_INDEX, dtype=np.int64)
        for s, e in zip(self.label_starts, self.label_ends):
            labels[s:e] = self.input_ids[s:e]
        return labels

    @property
    def n_label_tokens(self) -> int:
        return int((self.label_ends - self.label_starts).sum())


class Llama3Chat:
    """The Llama-3.1 chat layout over a tokenizer that has Llama-3's special tokens."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.bos = tokenizer.special_id("<|begin_of_text|>")
        self.eot = tokenizer.special_id("<|eot_id|>")
        self.start_header = tokenizer.special_id("<|start_header_id|>")
        self.end_header = tokenizer.special_id("<|end_header_id|>")
        newline2 = tokenizer.encode("\n\n")
        self._headers = {
            role: np.array([self.start_header, *tokenizer.encode(role), self.end_header, *newline2],
                           dtype=np.int32)
            for role in ROLES}

    @staticmethod
    def system_text(prompt: str) -> str:
        """Content of the system turn for ``prompt``, as the stock template writes it: the date
        lines, then the stripped prompt (which may be empty)."""
        return LLAMA31_SYSTEM_PREAMBLE + prompt.strip()

    def header(self, role: str) -> np.ndarray:
        """Ids of ``<|start_header_id|>{role}<|end_header_id|>\\n\\n``."""
        return self._headers[role]

    def turn_overhead(self, role: str) -> int:
        """Tokens a turn adds besides its content (header + ``<|eot_id|>``)."""
        return len(self._headers[role]) + 1

    def length(self, turns: Sequence[Turn]) -> int:
        """Exact token count of ``encode(turns)`` without building it."""
        return 1 + sum(self.turn_overhead(t.role) + t.n_content_tokens for t in turns)

    def encode(self, turns: Sequence[Turn]) -> EncodedChat:
        """Assemble the ids into one preallocated array; answer spans come from the layout."""
        total = self.length(turns)
        ids = np.empty(total, dtype=np.int32)
        ids[0] = self.bos
        pos = 1
        starts, ends, piece_starts = [], [], []
        for turn in turns:
            head = self._headers[turn.role]
            ids[pos:pos + len(head)] = head
            pos += len(head)
            content_start = pos
            for piece in turn.pieces:
                piece_starts.append(pos)
                ids[pos:pos + len(piece)] = piece
                pos += len(piece)
            ids[pos] = self.eot
            pos += 1
            if turn.role == "assistant":
                starts.append(content_start)
                ends.append(pos)  # the answer's <|eot_id|> is learned too
        assert pos == total
        return EncodedChat(ids, np.asarray(starts, dtype=np.int32), np.asarray(ends, dtype=np.int32),
                           piece_starts)

    @staticmethod
    def render_text(turns: Sequence[Turn]) -> str:
        """The chat as template text (special tokens written out), from each turn's ``texts``."""
        parts = ["<|begin_of_text|>"]
        for turn in turns:
            if turn.texts is None:
                raise ValueError("render_text needs Turn.texts")
            parts.append(f"<|start_header_id|>{turn.role}<|end_header_id|>\n\n")
            parts.extend(turn.texts)
            parts.append("<|eot_id|>")
        return "".join(parts)
