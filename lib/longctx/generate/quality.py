"""Quality gates applied to every generated QA pair and summary.

Each gate returns ``None`` (accept) or a short reason string (reject); the pipeline regenerates
a rejected item with a new seed within its budget and keeps rejects apart, with reasons.
The placeholder list comes from what small generators actually produce (SmolLM2-135M often
writes "What is the answer to the question" or echoes the JSON example).

Two gates compare words, not strings, on *content stems*: lower-cased words without function
words, cut by a few English suffix rules (:func:`content_stems`). Hand-written on purpose: the
project has no NLP dependency at stage 1, and the comparison needs only that "married",
"marries" and "marry" meet, not a linguist's stem.

* Support (:func:`answer_support`): the share of the answer's content stems found in the text the
  generator was shown (the passage, or the summaries a section or global question is asked
  from). An answer that invents most of its words ("4,", a name not in the passage) scores low.
  It is a lexical screen, not a proof; the optional judge pass (``judge_qa``) asks the
  generator itself.
* Near-duplicates (:class:`QuestionIndex`): two questions are duplicates when their stem sets,
  question words kept (so "when" and "why" about the same event differ), overlap by Jaccard
  >= 0.7 or one holds >= 80 % of the other's stems (a paraphrase that only reorders or adds a
  few words).
"""

from __future__ import annotations

import re
from typing import Iterable

__all__ = ["qa_problem", "summary_problem", "normalise", "content_stems", "answer_support", "QuestionIndex"]

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
# An answer that stops on a comma, colon, dash or an opening bracket was cut off ("4,").
_CUT_OFF = re.compile(r"[,;:(\[{\-–—“]$")
_QUESTION_WORDS = frozenset("what when where which who whom whose why how".split())
_FUNCTION_WORDS = frozenset("""
a an the and or but nor so yet if then than as of to in on at by for from with without into onto upon
about above after before between during through over under again further once
is am are was were be been being do does did doing done have has had having will would shall should
can could may might must it its it's this that these those there here i me my we us our you your he
him his she her they them their one ones not no yes also very just only too any some all each every
such own same other more most much many what when where which who whom whose why how
""".split())
_SUFFIXES = ("'s", "ingly", "edly", "ing", "ed", "ies", "es", "s", "ly")


def normalise(text: str) -> str:
    """Lower-case words only: the form exact-duplicate detection compares."""
    return " ".join(_WORD.findall(text.lower()))


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + ("y" if suffix == "ies" else "")
            break
    return word[:-1] + "y" if word.endswith("i") else word  # marri(ed) -> marry


def content_stems(text: str, keep_question_words: bool = False) -> frozenset[str]:
    """Stems of the words that carry content (see the module docstring)."""
    words = _WORD.findall(text.lower())
    return frozenset(_stem(w) for w in words
                     if w not in _FUNCTION_WORDS or (keep_question_words and w in _QUESTION_WORDS))


def answer_support(answer: str, source: str) -> float:
    """Share of the answer's content stems that occur in ``source`` (1.0 for an answer without any)."""
    stems = content_stems(answer)
    if not stems:
        return 1.0
    return len(stems & content_stems(source)) / len(stems)


def _degenerate(text: str) -> bool:
    """Long text made of a few words repeated (a looping generator)."""
    words = _WORD.findall(text.lower())
    if len(words) < 12:
        return False
    return len(set(words)) / len(words) < 0.3


class QuestionIndex:
    """The questions accepted so far in one document, for duplicate detection."""

    def __init__(self, questions: Iterable[str] = (), jaccard_threshold: float = 0.7,
                 containment_threshold: float = 0.8):
        self.jaccard, self.containment = jaccard_threshold, containment_threshold
        self._items: list[tuple[str, frozenset[str]]] = []
        for q in questions:
            self.add(q)

    def add(self, question: str) -> None:
        self._items.append((normalise(question), content_stems(question, keep_question_words=True)))

    def duplicates(self, question: str) -> bool:
        norm = normalise(question)
        stems = content_stems(question, keep_question_words=True)
        for other_norm, other in self._items:
            if norm == other_norm:
                return True
            shared = len(stems & other)
            if not shared:
                continue
            if shared / len(stems | other) >= self.jaccard:
                return True
            smaller = min(len(stems), len(other))
            if smaller >= 3 and shared / smaller >= self.containment:
                return True
        return False


def qa_problem(question: object, answer: object, seen: QuestionIndex, source: str | None = None,
               min_support: float = 0.0) -> str | None:
    """Why this QA pair must be rejected, or None. ``source``: the text the generator was shown,
    for the support check (skipped when None or ``min_support`` is 0)."""
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
    if _CUT_OFF.search(a):
        return "answer cut off"
    if len(normalise(a).split()) < 2:
        return "answer too short"
    if normalise(a) == normalise(q) or (len(a) > 8 and normalise(a) in normalise(q)):
        return "answer repeats the question"
    if _degenerate(a) or _degenerate(q):
        return "degenerate repetition"
    if source is not None and min_support > 0 and answer_support(a, source) < min_support:
        return "answer not supported by the passage"
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
