"""LongBench v1: the 21 data sets through ``datasets``, official metrics, official post-processing.

Rows come from ``THUDM/LongBench`` (config = data set, split ``test``; columns ``input``,
``context``, ``answers``, ``all_classes``, ``length``) or a local file with those columns.
Scoring follows LongBench's ``eval.py``: per sample the best score over the gold answers;
for trec, triviaqa, samsum and lsht only the first line of the prediction counts; a data set's
score is the mean times 100. The few-shot and code data sets are sent without the chat template,
as LongBench's ``pred.py`` does. Prompts that do not fit are cut in the middle (the official
behaviour) by the evaluation's truncation policy (see :mod:`longctx.eval.fit`). Prompt wording
is ours; generation budgets are LongBench's.
"""

from __future__ import annotations

from typing import Callable

from . import metrics as M
from .hub import load_subset
from .sample import Sample

__all__ = ["LONGBENCH_TASKS", "load_longbench", "score_longbench", "HUB_ID"]

HUB_ID = "THUDM/LongBench"

_QA = "Answer the question from the text below. Be as brief as possible.\n\n{context}\n\nQuestion: {input}\nAnswer:"
_QA_ZH = "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答："
_SUM = "{intro}\n\n{context}\n\nNow write a one-page summary{focus}.\n\nSummary:"

# name -> (prompt template, max new tokens, metric, first line only, chat template)
LONGBENCH_TASKS: dict[str, tuple[str, int, str, bool, bool]] = {
    "narrativeqa": ("You are given a story and a question. Answer in as few words as possible.\n\n"
                    "Story: {context}\n\nQuestion: {input}\n\nAnswer:", 128, "qa_f1", False, True),
    "qasper": ("You are given a scientific article and a question. Answer in as few words as possible; "
               "write \"unanswerable\" if it cannot be answered and \"yes\", \"no\" or \"unanswerable\" for a "
               "yes/no question.\n\nArticle: {context}\n\nQuestion: {input}\n\nAnswer:", 128, "qa_f1", False, True),
    "multifieldqa_en": (_QA, 64, "qa_f1", False, True),
    "multifieldqa_zh": (_QA_ZH, 64, "qa_f1_zh", False, True),
    "hotpotqa": (_QA, 32, "qa_f1", False, True),
    "2wikimqa": (_QA, 32, "qa_f1", False, True),
    "musique": (_QA, 32, "qa_f1", False, True),
    "dureader": ("请基于给定的文章回答下述问题。\n\n文章：{context}\n\n问题：{input}\n回答：", 128, "rouge_zh", False, True),
    "gov_report": (_SUM.replace("{intro}", "Here is a government report.").replace("{focus}", " of the report"),
                   512, "rouge", False, True),
    "qmsum": ("Here is a meeting transcript and a query about it.\n\nTranscript:\n{context}\n\nAnswer the "
              "query in one or more sentences.\n\nQuery: {input}\nAnswer:", 512, "rouge", False, True),
    "multi_news": (_SUM.replace("{intro}", "Here are several news articles.").replace("{focus}", " of all the news"),
                   512, "rouge", False, True),
    "vcsum": ("下面是一段会议记录。\n\n{context}\n\n请用中文为这段会议记录写一段总结。\n\n会议总结：", 512, "rouge_zh", False, True),
    "trec": ("Give the type of the question, following the examples.\n\n{context}\n{input}", 64, "classification", True, False),
    "triviaqa": ("Answer the question from the passage, following the examples.\n\n{context}\n\n{input}", 32, "qa_f1", True, False),
    "samsum": ("Summarize the dialogue, following the examples.\n\n{context}\n\n{input}", 128, "rouge", True, False),
    "lsht": ("请判断新闻的类别，参考下面的例子。\n\n{context}\n{input}", 64, "classification", True, False),
    "passage_count": ("Below are paragraphs, some of them duplicates. How many distinct paragraphs are "
                      "there? Reply with the number only.\n\n{context}\n\nThe number of distinct paragraphs is:",
                      32, "count", False, True),
    "passage_retrieval_en": ("Below are 30 paragraphs and an abstract. Which paragraph is the abstract "
                             "from?\n\n{context}\n\nAbstract: {input}\n\nReply like \"Paragraph 1\".\n\nThe answer is:",
                             32, "retrieval", False, True),
    "passage_retrieval_zh": ("以下是若干段落和一个摘要。请判断摘要来自哪一段。\n\n{context}\n\n摘要：{input}\n\n"
                             "请用\"段落1\"的格式回答。\n\n答案是：", 32, "retrieval_zh", False, True),
    "lcc": ("Complete the code below.\n{context}Next line of code:\n", 64, "code_sim", False, False),
    "repobench-p": ("Complete the code below.\n{context}{input}Next line of code:\n", 64, "code_sim", False, False),
}

_METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": M.qa_f1, "qa_f1_zh": M.qa_f1_zh, "rouge": M.rouge_l, "rouge_zh": M.rouge_zh,
    "count": M.count_score, "retrieval": M.retrieval_score, "retrieval_zh": M.retrieval_zh_score,
    "code_sim": M.code_sim_score,
}


def load_longbench(task: str, max_rows: int = 0, local_path: str = "", hub_id: str = HUB_ID,
                   seed: int = 0) -> list[Sample]:
    """Samples of one LongBench data set: every row (``max_rows`` = 0, comparable with published
    scores) or a seeded random ``max_rows`` of them; each sample's meta says which (raises
    ``Unavailable`` when the set cannot be loaded)."""
    template, max_new, metric, _, chat = LONGBENCH_TASKS[task]
    subset = load_subset(hub_id, task, "test", local_path=local_path or None, max_rows=max_rows, seed=seed)
    samples = []
    for index, row in enumerate(subset.rows):
        prompt = template.format(context=row["context"], input=row.get("input", ""))
        samples.append(Sample("longbench", task, index, 0, prompt, list(row["answers"]), max_new, chat=chat,
                              meta={"all_classes": list(row.get("all_classes") or []),
                                    "dataset_length": row.get("length"), "metric": metric,
                                    "n_available": subset.n_available, "subsample": subset.note}))
    return samples


def score_longbench(task: str, prediction: str, references: list[str], all_classes: list[str]) -> float:
    """One prediction's score with LongBench's semantics (``eval.py`` + ``metrics.py``)."""
    _, _, metric, first_line, _ = LONGBENCH_TASKS[task]
    if first_line:
        prediction = prediction.lstrip("\n").split("\n")[0]
    best = 0.0
    for ref in references:
        if metric == "classification":
            score = M.classification_score(prediction, ref, all_classes)
        else:
            score = _METRICS[metric](prediction, ref)
        best = max(best, score)
    return best


def metric_of(task: str) -> str:
    return LONGBENCH_TASKS[task][2]
