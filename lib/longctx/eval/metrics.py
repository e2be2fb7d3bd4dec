"""Scoring functions with the official semantics of each benchmark, and nothing else.

Every function scores ONE prediction against its references and returns a float in [0, 1];
benchmarks report the mean over samples times 100. Where the official scorer calls a library,
we call the same library (main dependencies of this package):

* RULER (``scripts/eval/synthetic/constants.py``): ``string_match_all`` = fraction of references
  found (case-insensitive substring) in the prediction; ``string_match_part`` = 1 if any is.
  Predictions are post-processed first (:func:`ruler_postprocess`: control chars -> newline).
  Plain Python in the official code too.
* LongBench v1 (``LongBench/metrics.py``): SQuAD-style token F1 after answer normalisation;
  ROUGE-L F of the ``rouge`` package (``Rouge().get_scores``); Chinese segmented with ``jieba``
  (``multifieldqa_zh``, ``dureader``, ``vcsum``); classification, passage retrieval / count;
  code edit similarity with fuzzywuzzy's ``fuzz.ratio`` semantics (see :func:`code_sim_score`).
* InfiniteBench (``src/compute_scores.py``): first-integer match, word-in-prediction, QA F1,
  Chinese character F1, and ROUGE-Lsum of Google's ``rouge_score`` (what ``evaluate``'s "rouge"
  runs, with its defaults: no stemmer, the default tokenizer).

:data:`ZH_SEGMENTER` names the Chinese segmenter with its version, for the results table.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
import string
from collections import Counter
from importlib.metadata import version
from typing import Sequence

import jieba
from rouge import Rouge

__all__ = [
    "ruler_postprocess", "string_match_all", "string_match_part",
    "normalize_answer", "normalize_zh_answer", "token_f1", "qa_f1", "qa_f1_zh", "qa_f1_zh_chars",
    "zh_words", "rouge_l", "rouge_zh", "rouge_lsum", "classification_score", "retrieval_score",
    "retrieval_zh_score", "count_score", "code_sim_score", "first_int_match",
    "ZH_SEGMENTER",
]

_CONTROL = re.compile(r"[\x00-\x1f]")
_CN_PUNCTUATION = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕"
                   "〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")
_ALL_PUNCTUATION = set(string.punctuation + _CN_PUNCTUATION)
_EN_PUNCTUATION = set(string.punctuation)

jieba.setLogLevel(logging.WARNING)  # its dictionary load otherwise logs two lines per process
ZH_SEGMENTER = f"jieba {version('jieba')}"


def zh_words(text: str) -> list[str]:
    """LongBench's Chinese segmentation: ``jieba.cut(text, cut_all=False)`` (precise mode, HMM on)."""
    return list(jieba.cut(text, cut_all=False))


# --------------------------------------------------------------------------- RULER


def ruler_postprocess(prediction: str) -> str:
    """RULER's prediction clean-up: strip, control characters become newlines, strip again."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of ``references`` that occur (case-insensitively) in ``prediction``."""
    if not references:
        return 0.0
    low = prediction.lower()
    return sum(1.0 for r in references if r.lower() in low) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1 if any of ``references`` occurs (case-insensitively) in ``prediction``, else 0."""
    low = prediction.lower()
    return 1.0 if any(r.lower() in low for r in references) else 0.0


# --------------------------------------------------------------------------- token F1


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, drop a/an/the, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _EN_PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalize_zh_answer(text: str) -> str:
    """Chinese normalisation: lower case, drop Chinese and ASCII punctuation and all whitespace."""
    return "".join(ch for ch in text.lower() if ch not in _ALL_PUNCTUATION and not ch.isspace())


def token_f1(prediction_tokens: Sequence[str], reference_tokens: Sequence[str]) -> float:
    """Bag-of-tokens F1 (multiset overlap)."""
    overlap = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, reference: str) -> float:
    """English QA F1 (LongBench ``qa_f1_score``, InfiniteBench ``qa_f1_score`` per reference)."""
    return token_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


def qa_f1_zh(prediction: str, reference: str) -> float:
    """LongBench ``qa_f1_zh_score``: segment (jieba), normalise each word, drop empty ones."""
    pred = [w for w in (normalize_zh_answer(t) for t in zh_words(prediction)) if w]
    ref = [w for w in (normalize_zh_answer(t) for t in zh_words(reference)) if w]
    return token_f1(pred, ref)


def qa_f1_zh_chars(prediction: str, reference: str) -> float:
    """InfiniteBench Zh.QA F1: normalise, then one character is one token."""
    return token_f1(list(normalize_zh_answer(prediction)), list(normalize_zh_answer(reference)))


# --------------------------------------------------------------------------- ROUGE


@functools.lru_cache(maxsize=1)
def _rouge() -> Rouge:
    # LongBench builds Rouge() with its defaults; only "rouge-l" is read, and rouge-1/2 raise
    # exactly when rouge-l does (empty sentence lists), so computing rouge-l alone is the same.
    return Rouge(metrics=["rouge-l"])


@functools.lru_cache(maxsize=1)
def _rouge_lsum():
    # imported here: rouge_score imports nltk (about a second), needed by En.Sum alone
    from rouge_score.rouge_scorer import RougeScorer

    # evaluate's "rouge" metric: RougeScorer(rouge_types, use_stemmer=False, tokenizer=None)
    return RougeScorer(["rougeLsum"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """LongBench ``rouge_score``: ``Rouge().get_scores([pred], [ref], avg=True)["rouge-l"]["f"]``
    of the ``rouge`` package (sentences split on ".", word sets, summary-level union LCS).

    LongBench wraps the call in a bare ``except`` that scores 0. Two things raise: an empty
    prediction or reference ("Collections must contain at least 1 sentence"), and the package's
    recursive LCS back-trace on a sentence pair of more than about 1,000 words together
    (``RecursionError`` under Python's default limit). Both score 0 here as there."""
    try:
        return float(_rouge().get_scores([prediction], [reference], avg=True)["rouge-l"]["f"])
    except (ValueError, RecursionError):
        return 0.0


def rouge_zh(prediction: str, reference: str) -> float:
    """LongBench ``rouge_zh_score``: segment both texts with jieba, join with spaces, ROUGE-L."""
    return rouge_l(" ".join(zh_words(prediction)), " ".join(zh_words(reference)))


def rouge_lsum(prediction: str, reference: str) -> float:
    """InfiniteBench En.Sum: ROUGE-Lsum F of ``rouge_score`` (sentences are lines; lower-cased
    alphanumeric tokens, no stemming), as ``evaluate.load("rouge").compute(...)["rougeLsum"]``."""
    return float(_rouge_lsum().score(reference, prediction)["rougeLsum"].fmeasure)


# --------------------------------------------------------------------------- LongBench others


def classification_score(prediction: str, reference: str, all_classes: Sequence[str]) -> float:
    """LongBench ``classification_score``: class names found in the prediction, minus those that
    are substrings of the gold class; 1/len(matches) if the gold class is among them."""
    matches = [c for c in all_classes if c in prediction]
    # The official loop removes items from the list it iterates over, which skips the item
    # right after each removal; reproduced on purpose so scores match LongBench's.
    i = 0
    while i < len(matches):
        term = matches[i]
        if term in reference and term != reference:
            matches.remove(term)
        i += 1
    return 1.0 / len(matches) if reference in matches else 0.0


def _retrieval(prediction: str, reference: str, gold_pattern: str) -> float:
    """Share of the numbers in the prediction equal to the gold paragraph number."""
    gold = re.findall(gold_pattern, reference)
    numbers = re.findall(r"\d+", prediction)
    if not gold or not numbers:
        return 0.0
    return sum(1 for n in numbers if n == gold[0]) / len(numbers)


def retrieval_score(prediction: str, reference: str) -> float:
    """LongBench ``retrieval_score`` (passage_retrieval_en): gold is ``Paragraph N``."""
    return _retrieval(prediction, reference, r"Paragraph (\d+)")


def retrieval_zh_score(prediction: str, reference: str) -> float:
    """LongBench ``retrieval_zh_score`` (passage_retrieval_zh): gold is ``段落N``."""
    return _retrieval(prediction, reference, r"段落(\d+)")


def count_score(prediction: str, reference: str) -> float:
    """LongBench ``count_score`` (passage_count): share of numbers in the prediction equal to gold."""
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(1 for n in numbers if n == str(reference)) / len(numbers)


def code_sim_score(prediction: str, reference: str) -> float:
    """LongBench ``code_sim_score``: the first line of the prediction without a backtick, "#" or
    "//", compared with ``fuzzywuzzy.fuzz.ratio(line, reference) / 100``.

    LongBench's requirements install fuzzywuzzy without python-Levenshtein, so its ratio is
    difflib's ``SequenceMatcher.ratio`` (Ratcliff-Obershelp) behind three wrappers, reproduced
    here: equal strings score 100 (even two empty ones), else an empty one scores 0, else
    ``int(round(100 * ratio))``. We call difflib directly because fuzzywuzzy is GPL-2.0 (this
    package is Apache-2.0) and its maintained successors (thefuzz, rapidfuzz) compute an
    Indel-distance ratio that differs from difflib's; the tests compare with fuzzywuzzy itself."""
    first = ""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            first = line
            break
    if first == reference:
        return 1.0
    if not first or not reference:
        return 0.0
    return int(round(100 * difflib.SequenceMatcher(None, first, reference).ratio())) / 100


# --------------------------------------------------------------------------- InfiniteBench helpers


def first_int_match(prediction: str) -> str:
    """The first run of digits in ``prediction`` ("" if none) - InfiniteBench passkey/number_string."""
    for part in re.split(r"[^0-9]", prediction):
        if part:
            return part
    return ""
