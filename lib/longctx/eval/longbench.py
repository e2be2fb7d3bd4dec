"""LongBench v1: the 21 data sets with the official prompts, budgets, metrics and post-processing.

Rows come from a parquet mirror of ``THUDM/LongBench`` that ``datasets`` 5 loads (the official
repository is a loading script, which ``datasets`` >= 4 refuses): by default
``Xnhyacinth/LongBench``, the one lm-evaluation-harness reads (config = data set, split ``test``;
columns ``context``, ``question``, ``answers``, ``all_classes``, ``length``), or a local folder in
that layout, or a local file per data set. Rows with the official column ``input`` instead of
``question`` (the release's ``data/*.jsonl``) are read as well.

Prompts are LongBench's ``config/dataset2prompt.json``, byte for byte. Their text is not copied
here: it is read at run time from lm-evaluation-harness's task files
(``lm_eval/tasks/longbench/{task}.yaml``, ``doc_to_text``) and rendered with the harness's own
template engine (:func:`lm_eval.utils.apply_template`), so lm-eval is needed for LongBench (the
``harness`` extra). In 6 of the 21 files the harness departs from the official text in whitespace
only, and :func:`prompt_template` puts it back (see ``_OFFICIAL_WHITESPACE``); a test renders the
same rows with lm-eval and checks the rest byte for byte.

Scoring follows LongBench's ``eval.py``: per sample the best score over the gold answers; for
trec, triviaqa, samsum and lsht only the first line of the prediction counts; a data set's
score is the mean times 100. The few-shot and code data sets are sent without the chat template,
as LongBench's ``pred.py`` does. Prompts that do not fit are cut in the middle (the official
behaviour) by the evaluation's truncation policy (see :mod:`longctx.eval.fit`).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Callable

import yaml

from . import metrics as M
from .hub import Unavailable, load_subset
from .sample import Sample

__all__ = ["LONGBENCH_TASKS", "load_longbench", "score_longbench", "prompt_template", "longbench_prompt",
           "HUB_ID", "LM_EVAL_MISSING"]

HUB_ID = "Xnhyacinth/LongBench"  # lm-eval's dataset_path (a test checks they agree)
LM_EVAL_MISSING = ("LongBench's official prompts are read from lm-evaluation-harness's task files; "
                   "install it: pip install 'longctx[harness]' (lm-eval 0.4.x)")

# name -> (max new tokens (dataset2maxlen.json), metric, first line only, chat template)
LONGBENCH_TASKS: dict[str, tuple[int, str, bool, bool]] = {
    "narrativeqa": (128, "qa_f1", False, True),
    "qasper": (128, "qa_f1", False, True),
    "multifieldqa_en": (64, "qa_f1", False, True),
    "multifieldqa_zh": (64, "qa_f1_zh", False, True),
    "hotpotqa": (32, "qa_f1", False, True),
    "2wikimqa": (32, "qa_f1", False, True),
    "musique": (32, "qa_f1", False, True),
    "dureader": (128, "rouge_zh", False, True),
    "gov_report": (512, "rouge", False, True),
    "qmsum": (512, "rouge", False, True),
    "multi_news": (512, "rouge", False, True),
    "vcsum": (512, "rouge_zh", False, True),
    "trec": (64, "classification", True, False),
    "triviaqa": (32, "qa_f1", True, False),
    "samsum": (128, "rouge", True, False),
    "lsht": (64, "classification", True, False),
    "passage_count": (32, "count", False, True),
    "passage_retrieval_en": (32, "retrieval", False, True),
    "passage_retrieval_zh": (32, "retrieval_zh", False, True),
    "lcc": (64, "code_sim", False, False),
    "repobench-p": (64, "code_sim", False, False),
}

# Where lm-eval 0.4.x's task files differ from LongBench's dataset2prompt.json (commit 2e00731,
# compared byte for byte): whitespace only. task -> (lm-eval's text, the official text), matched at
# the end of the template ("" = append). Applied only where lm-eval still has its own form.
_OFFICIAL_WHITESPACE: dict[str, tuple[str, str]] = {
    "triviaqa": ("}}\n{{question}}", "}}\n\n{{question}}"),    # a blank line before the open question
    "samsum": ("}}\n{{question}}", "}}\n\n{{question}}"),
    "passage_count": ("", " "),                                  # the official prompt ends "is: "
    "passage_retrieval_en": ("", " "),
    "lcc": ("", "\n"),                                            # ... "Next line of code:\n"
    "repobench-p": ("", "\n"),
}


def _lm_eval_task_file(task: str) -> dict[str, Any]:
    try:
        folder = resources.files("lm_eval") / "tasks" / "longbench"
    except ModuleNotFoundError as err:
        raise Unavailable(f"skipped: {LM_EVAL_MISSING}") from err
    path = folder / f"{task}.yaml"

    class _Loader(yaml.SafeLoader):  # the task files name their scorers with !function
        pass

    _Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    try:
        return {"path": str(path), **yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)}
    except FileNotFoundError as err:
        raise Unavailable(f"skipped: lm-eval has no LongBench task file {path}") from err


@functools.lru_cache(maxsize=None)
def prompt_template(task: str) -> str:
    """The official prompt of ``task`` as a Jinja template over ``context`` and ``question``."""
    cfg = _lm_eval_task_file(task)
    template = cfg["doc_to_text"]
    if task in _OFFICIAL_WHITESPACE:
        theirs, official = _OFFICIAL_WHITESPACE[task]
        if not template.endswith(official):
            if theirs and theirs not in template:
                raise RuntimeError(f"{cfg['path']}: lm-eval's prompt of {task} changed shape (no {theirs!r}); "
                                   "compare it with LongBench's dataset2prompt.json again")
            template = template.replace(theirs, official) if theirs else template + official
    return template


def longbench_prompt(task: str, row: dict[str, Any]) -> str:
    """The official prompt of one row (a mirror row with ``question`` or an official one with ``input``)."""
    from lm_eval.utils import apply_template  # the harness's own Jinja environment

    question = row["question"] if "question" in row else row.get("input", "")
    return apply_template(prompt_template(task), {"context": row["context"], "question": question or ""})


def load_longbench(task: str, max_rows: int = 0, local_path: str = "", hub_id: str = HUB_ID,
                   seed: int = 0) -> list[Sample]:
    """Samples of one LongBench data set: every row (``max_rows`` = 0, comparable with published
    scores) or a seeded random ``max_rows`` of them; each sample's meta says which. ``hub_id`` is
    a hub id or a local folder in the mirror's layout. Raises ``Unavailable`` naming the task and
    the file or hub id when the set cannot be loaded."""
    max_new, metric, _, chat = LONGBENCH_TASKS[task]
    prompt_template(task)  # no lm-eval: say so before loading anything
    try:
        subset = load_subset(hub_id, task, "test", local_path=local_path or None, max_rows=max_rows, seed=seed)
    except Unavailable as err:
        raise Unavailable(f"{err} [longbench/{task} from {local_path or hub_id}]") from err
    samples = []
    for index, row in enumerate(subset.rows):
        missing = [c for c in ("context", "answers") if c not in row]
        if missing:
            raise Unavailable(f"skipped: longbench/{task} row {index} of {local_path or hub_id} has no "
                              f"column(s) {missing}; columns: {sorted(row)}")
        samples.append(Sample("longbench", task, index, 0, longbench_prompt(task, row), list(row["answers"]),
                              max_new, chat=chat,
                              meta={"all_classes": list(row.get("all_classes") or []),
                                    "dataset_length": row.get("length"), "metric": metric,
                                    "n_available": subset.n_available, "subsample": subset.note}))
    return samples


_METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": M.qa_f1, "qa_f1_zh": M.qa_f1_zh, "rouge": M.rouge_l, "rouge_zh": M.rouge_zh,
    "count": M.count_score, "retrieval": M.retrieval_score, "retrieval_zh": M.retrieval_zh_score,
    "code_sim": M.code_sim_score,
}


def score_longbench(task: str, prediction: str, references: list[str], all_classes: list[str]) -> float:
    """One prediction's score with LongBench's semantics (``eval.py`` + ``metrics.py``)."""
    _, metric, first_line, _ = LONGBENCH_TASKS[task]
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
    return LONGBENCH_TASKS[task][1]
