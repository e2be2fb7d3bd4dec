"""RULER's task table, prompt templates and the context every task generator shares.

Shared by :mod:`longctx.eval.ruler` (preparation and caching) and the generators in
:mod:`longctx.eval.ruler_tasks` and :mod:`longctx.eval.ruler_qa`, which ``ruler`` calls: kept
apart so that no two of those modules import each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.tokenizer import Tokenizer

__all__ = ["RULER_TASKS", "RulerTask", "TEMPLATES", "ANSWER_PREFIXES", "NEEDLE", "NOISE", "ruler_metric",
           "RulerContext"]


@dataclass(frozen=True)
class RulerTask:
    kind: str                      # niah / vt / cwe / fwe / qa
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_to_generate(self) -> int:
        return {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}[self.kind]

    @property
    def metric(self) -> str:
        return "string_match_part" if self.kind == "qa" else "string_match_all"


def _niah(haystack: str, key: str = "words", value: str = "numbers", k: int = 1, v: int = 1,
          q: int = 1) -> RulerTask:
    return RulerTask("niah", {"haystack": haystack, "type_key": key, "type_value": value,
                              "num_keys": k, "num_values": v, "num_queries": q})


RULER_TASKS: dict[str, RulerTask] = {
    "niah_single_1": _niah("noise"),
    "niah_single_2": _niah("essay"),
    "niah_single_3": _niah("essay", value="uuids"),
    "niah_multikey_1": _niah("essay", k=4),
    "niah_multikey_2": _niah("needle"),
    "niah_multikey_3": _niah("needle", key="uuids", value="uuids"),
    "niah_multivalue": _niah("essay", v=4),
    "niah_multiquery": _niah("essay", k=4, q=4),
    "vt": RulerTask("vt", {"num_chains": 1, "num_hops": 4}),
    "cwe": RulerTask("cwe", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    "fwe": RulerTask("fwe", {"alpha": 2.0, "coded_wordlen": 6}),
    "qa_1": RulerTask("qa", {"dataset": "squad"}),
    "qa_2": RulerTask("qa", {"dataset": "hotpotqa"}),
}

# Our wording of RULER's templates; {context} is where the haystack goes.
TEMPLATES = {
    "niah": ("{Some} special magic {kind} {are} hidden in the text below. Memorize {them}; I will "
             "ask you about the {kind} afterwards.\n{context}\nWhat {are_all} the special magic "
             "{kind} for {query} in the text above?"),
    "vt": ("Keep track of the chains of variable assignments hidden in the text below.\n\n{context}\n"
           "Question: Which variables are assigned the value {query} in the text above?"),
    "cwe": ("Here is a numbered list of words. Some words occur more often than others; remember "
            "the most frequent ones.\n{context}\nQuestion: Which {num_cw} words occur most often in "
            "the list above?"),
    "fwe": ("Read the coded text below and count how often each coded word occurs; find the three "
            "most frequent coded words. {context}\nQuestion: Give no explanation and ignore the dots "
            "'....'. Which three words occur most often in the coded text above?"),
    "qa": ("Answer the question using the documents below. Reply with the answer only, no other "
           "words.\n\nDocuments:\n\n{context}\n\nAnswer the question using the documents above. Reply "
           "with the answer only, no other words.\n\nQuestion: {query}"),
}
ANSWER_PREFIXES = {
    "niah": " The special magic {kind} for {query} in the text above {are}",
    "vt": (" Answer: Following the assignment chains in the text above, {num_v} variables get the "
           "value {query}. They are:"),
    "cwe": " Answer: The {num_cw} most frequent words in the list are:",
    "fwe": " Answer: The three most frequent words in the coded text above are:",
    "qa": " Answer:",
}
NEEDLE = "One special magic {kind_singular} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def ruler_metric(task: str) -> str:
    return RULER_TASKS[task].metric


@dataclass
class RulerContext:
    """What every generator needs: the tokenizer, the prose haystack, caches, data sources."""

    tokenizer: Tokenizer
    haystack_corpus: str = "austen"         # corpus spec (see longctx.generate.corpus)
    cache_dir: str | Path | None = None
    verify: bool = True                     # tokenise each final prompt once to confirm its length
    squad_path: str = ""                    # local file shaped like the hub rows ("" = the hub)
    hotpotqa_path: str = ""
    qa_doc_order: str = "fixed"             # "fixed": RULER's one seeded shuffle per length; "per_sample"
    qa_order_seed: int = 42                 # the fixed shuffle's seed (RULER's --random_seed default)
    _essay: Any = None
    _words: list[str] | None = None
    _source: str = ""
    _qa_sizes: dict = field(default_factory=dict)  # (dataset, length, budget) -> documents of the first sample

    def essay(self):
        from .haystack import corpus_text, essay_units

        if self._essay is None:
            text, self._source = corpus_text(self.haystack_corpus)
            self._essay = essay_units(self.tokenizer, text, self._units_cache())
            self._words = _vocabulary(text)
        return self._essay

    def words(self) -> list[str]:
        if self._words is None:
            self.essay()
        return self._words

    @property
    def haystack_source(self) -> str:
        return self._source

    def _units_cache(self) -> Path | None:
        return Path(self.cache_dir) / "units" if self.cache_dir else None


def _vocabulary(text: str) -> list[str]:
    """Distinct lower-case words (3-12 letters) of the corpus, sorted: key words and cwe words."""
    return sorted(set(re.findall(r"\b[a-z]{3,12}\b", text)))
