"""What stands behind a results row besides the score: how text was segmented for the metric,
which scoring library (and version) computed it, and which rows of a data set were used.

The results table carries these so a number can be compared with a published one: LongBench's
Chinese sets are only comparable when segmented with jieba, and a subsample is not the full set.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any, Sequence

from .longbench import LONGBENCH_TASKS
from .metrics import ZH_SEGMENTER
from .sample import Sample

__all__ = ["scoring_provenance", "data_provenance"]

# metric -> (segmenter, scoring library); "" = plain Python string / number rules
_LONGBENCH = {
    "qa_f1": ("whitespace", ""),
    "qa_f1_zh": (ZH_SEGMENTER, ""),
    "rouge": ("whitespace", "rouge"),
    "rouge_zh": (ZH_SEGMENTER, "rouge"),
    "code_sim": ("characters", "difflib (fuzzywuzzy ratio)"),
}
_INFINITEBENCH = {
    "longbook_qa_eng": ("whitespace", ""),
    "longbook_qa_chn": ("characters", ""),  # the official Zh.QA F1 is per character, no jieba
    "longbook_sum_eng": ("rouge_score tokenizer", "rouge-score"),
}


def _with_version(library: str) -> str:
    return f"{library} {version(library)}" if library in ("rouge", "rouge-score") else library


def scoring_provenance(benchmark: str, task: str) -> dict[str, str]:
    """``segmenter`` and ``scorer`` columns of a (benchmark, task) row ("" where no text is
    segmented or no library scores)."""
    if benchmark == "longbench" and task in LONGBENCH_TASKS:
        segmenter, library = _LONGBENCH.get(LONGBENCH_TASKS[task][1], ("", ""))
    elif benchmark == "infinitebench":
        segmenter, library = _INFINITEBENCH.get(task, ("", ""))
    else:
        segmenter, library = "", ""
    return {"segmenter": segmenter, "scorer": _with_version(library)}


def data_provenance(samples: Sequence[Sample]) -> dict[str, Any]:
    """``n_available`` (rows in the whole data set) and ``subsample`` (empty for the full set) of
    a hub data set's samples; empty for generated tasks."""
    if not samples or "n_available" not in samples[0].meta:
        return {"n_available": "", "subsample": ""}
    return {"n_available": samples[0].meta["n_available"], "subsample": samples[0].meta.get("subsample", "")}
