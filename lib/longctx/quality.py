"""Quality gates applied to every generated QA pair and summary.

Each gate returns ``None`` (accept) or a short reason string (reject); the pipeline regenerates
a rejected item with a new seed up to its retry limit and keeps rejects apart, with reasons.
The placeholder list comes from what small generators actually produce (SmolLM2-135M often
writes "What is the answer to the question" or echoes the JSON example).
"""

from __future__ import annotations

import re
from typing import Iterable

__all__ = ["qa_problem", "summary_problem", "normalise", "QuestionIndex"]

# A question ends with "?"; without one only an instruction counts ("Describe ...", "Explain ...").
# "What does the text say," is a cut-off question, not a question.
_IMPERATIVE = re.compile(r"^(describe|explain|name|list|compare|identify|summari[sz]e|discuss|trace)\b",
                         re.IGNORECASE)
_PLACEHOLDERS = re.compile(
    r"(what is the answer to the question|answer to the question|the answer is the answer|"
    r"your (question|answer)( here)?|^\.\.\.$|^\?$|lorem ipsum|<answer>|<question>|\[answer\]|"
    r"\[question\]|^n/?a$|^none$|^unknown$|^answer$|^question\??$|insert (question|answer)|"
    r"^\.\.\.\?$|^summary$|^\.\.\.$)", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9']+")


def normalise(text: str) -> str:
    """Lower-case words only: the form duplicate detection compares."""
    return " ".join(_WORD.findall(text.lower()))


def _degenerate(text: str) -> bool:
    """Long text made of a few words repeated (a looping generator)."""
    words = _WORD.findall(text.lower())
    if len(words) < 12:
        return False
    return len(set(words)) / len(words) < 0.3


class QuestionIndex:
    """The questions accepted so far in one document, for duplicate detection."""

    def __init__(self, questions: Iterable[str] = (), jaccard_threshold: float = 0.85):
        self.threshold = jaccard_threshold
        self._items: list[tuple[str, frozenset[str]]] = []
        for q in questions:
            self.add(q)

    def add(self, question: str) -> None:
        norm = normalise(question)
        self._items.append((norm, frozenset(norm.split())))

    def duplicates(self, question: str) -> bool:
        norm = normalise(question)
        words = frozenset(norm.split())
        for other_norm, other_words in self._items:
            if norm == other_norm:
                return True
            union = words | other_words
            if union and len(words & other_words) / len(union) >= self.threshold:
                return True
        return False


def qa_problem(question: object, answer: object, seen: QuestionIndex) -> str | None:
    """Why this QA pair must be rejected, or None."""
    if not isinstance(question, str) or not isinstance(answer, str):
        return "schema: question and answer must be strings"
    q, a = question.strip(), answer.strip()
    if not q:
        return "empty question"
    if not a:
        return "empty answer"
    if _PLACEHOLDERS.search(q) or _PLACEHOLDERS.search(a):
        return "placeholder text"
    if len(normalise(q).split()) < 3:
        return "question too short"
    if not (q.endswith("?") or _IMPERATIVE.match(q)):
        return "not a question"
    if normalise(a) == normalise(q) or (len(a) > 8 and normalise(a) in normalise(q)):
        return "answer repeats the question"
    if _degenerate(a) or _degenerate(q):
        return "degenerate repetition"
    if seen.duplicates(q):
        return "duplicate question"
    return None


def summary_problem(summary: object) -> str | None:
    """Why this summary must be rejected, or None."""
    if not isinstance(summary, str):
        return "schema: summary must be a string"
    s = summary.strip()
    if len(normalise(s).split()) < 5:
        return "summary too short"
    if _PLACEHOLDERS.search(s):
        return "placeholder text"
    if _degenerate(s):
        return "degenerate repetition"
    return None
