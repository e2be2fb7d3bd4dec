"""Scoring functions with the official semantics of each benchmark, and nothing else.

Every function scores ONE prediction against its references and returns a float in [0, 1];
benchmarks report the mean over samples times 100. The semantics follow the official scorers
(re-implemented here, no third-party scoring package needed):

* RULER (``scripts/eval/synthetic/constants.py``): ``string_match_all`` = fraction of references
  found (case-insensitive substring) in the prediction; ``string_match_part`` = 1 if any is.
  Predictions are post-processed first (:func:`ruler_postprocess`: control chars -> newline).
* LongBench v1 (``metrics.py``): SQuAD-style token F1 after answer normalisation, ROUGE-L F of the
  ``rouge`` package (sentences split on ".", word sets: its ``exclusive`` mode), classification,
  passage retrieval / count, and code edit similarity (fuzzywuzzy ``ratio`` / 100, computed with
  difflib as fuzzywuzzy does without python-Levenshtein).
* InfiniteBench (``src/compute_scores.py``): first-integer match, word-in-prediction, ROUGE-Lsum
  (Google ``rouge_score`` semantics: newline-separated sentences), Chinese character F1, etc.

Chinese word segmentation (LongBench's multifieldqa_zh / dureader / vcsum use ``jieba``) falls back
to one token per character when ``jieba`` is not installed; :data:`ZH_SEGMENTER` says which.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from typing import Sequence

__all__ = [
    "ruler_postprocess", "string_match_all", "string_match_part",
    "normalize_answer", "normalize_zh_answer", "token_f1", "qa_f1", "qa_f1_zh", "qa_f1_zh_chars",
    "rouge_l", "rouge_zh", "rouge_lsum", "classification_score", "retrieval_score",
    "retrieval_zh_score", "count_score", "code_sim_score", "first_int_match",
    "ZH_SEGMENTER",
]

_CONTROL = re.compile(r"[\x00-\x1f]")
_CN_PUNCTUATION = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕"
                   "〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")
_ALL_PUNCTUATION = set(string.punctuation + _CN_PUNCTUATION)
_EN_PUNCTUATION = set(string.punctuation)

try:  # LongBench segments Chinese with jieba; without it we fall back to characters
    import jieba as _jieba  # type: ignore

    ZH_SEGMENTER = "jieba"
except ImportError:  # pragma: no cover - depends on the environment
    _jieba = None
    ZH_SEGMENTER = "characters"


def _zh_words(text: str) -> list[str]:
    if _jieba is not None:
        return list(_jieba.cut(text, cut_all=False))
    return list(text)


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
    pred = [w for w in (normalize_zh_answer(t) for t in _zh_words(prediction)) if w]
    ref = [w for w in (normalize_zh_answer(t) for t in _zh_words(reference)) if w]
    return token_f1(pred, ref)


def qa_f1_zh_chars(prediction: str, reference: str) -> float:
    """InfiniteBench Zh.QA F1: normalise, then one character is one token."""
    return token_f1(list(normalize_zh_answer(prediction)), list(normalize_zh_answer(reference)))


# --------------------------------------------------------------------------- ROUGE


def _lcs_table(x: Sequence[str], y: Sequence[str]) -> list[list[int]]:
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        row, prev, xi = table[i], table[i - 1], x[i - 1]
        for j in range(1, len(y) + 1):
            row[j] = prev[j - 1] + 1 if xi == y[j - 1] else max(prev[j], row[j - 1])
    return table


def _lcs_pairs(x: Sequence[str], y: Sequence[str]) -> list[int]:
    """Indices into ``x`` of one longest common subsequence of ``x`` and ``y`` (backtracking
    prefers moving in ``y`` on ties, like the reference implementations)."""
    table = _lcs_table(x, y)
    i, j, out = len(x), len(y), []
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            out.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out[::-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F of the ``rouge`` package (``Rouge().get_scores(...)["rouge-l"]["f"]``) that
    LongBench calls: texts split into sentences on ".", words on single spaces, summary-level
    union LCS counted over word *sets* (the package's default ``exclusive`` mode). An empty
    prediction or reference scores 0 (the package raises; LongBench catches it as 0)."""
    hyp = [" ".join(s.split()) for s in prediction.split(".") if len(s) > 0]
    ref = [" ".join(s.split()) for s in reference.split(".") if len(s) > 0]
    if not hyp or not ref:
        return 0.0
    hyp_words = [w for s in hyp for w in s.split(" ")]
    ref_words = [w for s in ref for w in s.split(" ")]
    m, n = len(set(ref_words)), len(set(hyp_words))
    union: set[str] = set()
    hits = 0
    for ref_sentence in ref:
        r_words = ref_sentence.split(" ")
        before = len(union)
        for hyp_sentence in hyp:
            h_words = hyp_sentence.split(" ")
            union |= {r_words[i] for i in _lcs_pairs(r_words, h_words)}
        hits += len(union) - before
    recall, precision = hits / m, hits / n
    return 2.0 * (precision * recall) / (precision + recall + 1e-8)


def rouge_zh(prediction: str, reference: str) -> float:
    """LongBench ``rouge_zh_score``: segment both texts (jieba), join with spaces, ROUGE-L."""
    return rouge_l(" ".join(_zh_words(prediction)), " ".join(_zh_words(reference)))


def _rouge_tokens(text: str) -> list[str]:
    # rouge_score's default tokenizer: lower case, non-alphanumerics become spaces, no stemming
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def rouge_lsum(prediction: str, reference: str) -> float:
    """ROUGE-Lsum F (Google ``rouge_score``, as InfiniteBench's En.Sum uses through
    ``evaluate``): sentences are lines; per reference sentence, the union of its LCS with every
    prediction sentence; hits clipped by token counts on both sides."""
    ref_sents = [_rouge_tokens(s) for s in reference.split("\n")]
    hyp_sents = [_rouge_tokens(s) for s in prediction.split("\n")]
    ref_sents = [s for s in ref_sents if s]
    hyp_sents = [s for s in hyp_sents if s]
    n_ref = sum(len(s) for s in ref_sents)
    n_hyp = sum(len(s) for s in hyp_sents)
    if n_ref == 0 or n_hyp == 0:
        return 0.0
    ref_left = Counter(t for s in ref_sents for t in s)
    hyp_left = Counter(t for s in hyp_sents for t in s)
    hits = 0
    for r in ref_sents:
        union: set[int] = set()
        for h in hyp_sents:
            union.update(_lcs_pairs(r, h))
        for i in sorted(union):
            token = r[i]
            if ref_left[token] > 0 and hyp_left[token] > 0:
                hits += 1
                ref_left[token] -= 1
                hyp_left[token] -= 1
    recall, precision = hits / n_ref, hits / n_hyp
    return 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)


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
    """LongBench ``code_sim_score``: first line of the prediction that is not a comment or a code
    fence, compared with fuzzywuzzy's ``ratio`` (rounded percent of difflib similarity) / 100."""
    first = ""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            first = line
            break
    if not first or not reference:  # fuzzywuzzy returns 0 for an empty string
        return 0.0
    ratio = difflib.SequenceMatcher(None, first, reference).ratio()
    return int(round(100 * ratio)) / 100


# --------------------------------------------------------------------------- InfiniteBench helpers


def first_int_match(prediction: str) -> str:
    """The first run of digits in ``prediction`` ("" if none) - InfiniteBench passkey/number_string."""
    for part in re.split(r"[^0-9]", prediction):
        if part:
            return part
    return ""
