"""InfiniteBench: 12 tasks, six generated offline at any length, six read from the hub; official scoring.

| task (paper's name) | id | source | metric (``src/compute_scores.py``) |
| --- | --- | --- | --- |
| Retrieve.PassKey | passkey | generated | first integer == key |
| Retrieve.Number | number_string | generated | first integer == digits |
| Retrieve.KV | kv_retrieval | generated | value among the words of the prediction |
| Math.Find | math_find | generated | first number == answer |
| Math.Calc | math_calc | generated | correct leading intermediate results / all |
| Code.Run | code_run | generated | last word as integer == value |
| En.QA | longbook_qa_eng | hub | token F1 (max over answers) |
| En.MC | longbook_choice_eng | hub | option letter / text match |
| En.Sum | longbook_sum_eng | hub | ROUGE-Lsum |
| En.Dia | longdialogue_qa_eng | hub | name among the (upper-cased) words |
| Code.Debug | code_debug | hub | option letter / function name |
| Zh.QA | longbook_qa_chn | hub | character F1 |

Hub tasks come from ``xinrongzhang2022/InfiniteBench`` (split = task id) through ``datasets``
and are reported "skipped: not reachable" when it cannot be loaded. Their books are ~100K-2M
tokens: InfiniteBench's own scripts cut every prompt to 128K tokens from the middle; here the
cut is the evaluation's explicit truncation policy, applied against the model's own window
(no silent 128K cut for a 1M model) and reported per sample. Prompt wording is ours.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from ..core.tokenizer import Tokenizer
from . import metrics as M
from .haystack import PromptFrame, count_tokens
from .hub import load_subset
from .infinitebench_synth import MATH_FIND_TARGETS, SYNTHETIC, make_synthetic
from .sample import Sample, read_samples, write_samples
from .sample_keys import generator_version

__all__ = ["IB_TASKS", "IB_SYNTHETIC", "IB_HUB", "IB_NAMES", "prepare_infinitebench_synthetic",
           "load_infinitebench_hub", "score_infinitebench", "HUB_ID"]

HUB_ID = "xinrongzhang2022/InfiniteBench"
IB_SYNTHETIC = list(SYNTHETIC)
IB_HUB = ["longbook_qa_eng", "longbook_choice_eng", "longbook_sum_eng", "longdialogue_qa_eng",
          "code_debug", "longbook_qa_chn"]
IB_TASKS = IB_SYNTHETIC + IB_HUB
IB_NAMES = {"passkey": "Retrieve.PassKey", "number_string": "Retrieve.Number", "kv_retrieval": "Retrieve.KV",
            "math_find": "Math.Find", "math_calc": "Math.Calc", "code_run": "Code.Run",
            "longbook_qa_eng": "En.QA", "longbook_choice_eng": "En.MC", "longbook_sum_eng": "En.Sum",
            "longdialogue_qa_eng": "En.Dia", "code_debug": "Code.Debug", "longbook_qa_chn": "Zh.QA"}
# InfiniteBench's generation budgets (src/eval_utils.py); math_calc is capped per length below
MAX_NEW_TOKENS = {"passkey": 6, "number_string": 12, "kv_retrieval": 50, "longbook_sum_eng": 1200,
                  "longbook_choice_eng": 40, "longbook_qa_eng": 40, "longbook_qa_chn": 40,
                  "longdialogue_qa_eng": 40, "math_find": 3, "math_calc": 30000, "code_run": 5, "code_debug": 5}

_OPTS = "\n\nOnly one option is correct. Reply with its letter (A, B, C or D) and nothing else.\n"
TEMPLATES = {
    "passkey": ("Important information is hidden in a lot of irrelevant text below. Find it and "
                "remember it; I will ask you about it.\n\n{context}\n\n{input}", "The pass key is"),
    "number_string": ("Important information is hidden in a lot of irrelevant text below. Find it and "
                      "remember it; I will ask you about it.\n\n{context}\n\n{input}", "The sequence of digits is"),
    "kv_retrieval": ("Find the value stored under the given key in the JSON object below.\n\nJSON data:\n"
                     "{context}\nKey: \"{key}\"\nThe value stored under this key is:", ""),
    "math_find": ("What is the {target} number in the list below?\n\n{context}\n\nWhat is the {target} "
                  "number in the list above? Reply with the number only.", "The {target} number is"),
    "math_calc": ("Compute the running value of the long expression below: after each + or -, write "
                  "the result so far. Reply with the list of intermediate results, e.g. [3, 1, 8].\n\n"
                  "{context}\n\nIntermediate results:", "["),
    "code_run": ("Below are Python functions. Work out the value a call returns.\n\n{context}\n\nWhat "
                 "exactly does {call} return? Be brief and end your reply with the returned number.",
                 "The return value is"),
    "longbook_qa_eng": ("Read the book below, then answer the question as briefly as you can.\n\n"
                        "{context}\n\nQuestion: {input}", "Answer:"),
    "longbook_choice_eng": ("Read the book below, then answer the question.\n\n{context}\n\nQuestion: "
                            "{input}" + _OPTS + "A. {A}\nB. {B}\nC. {C}\nD. {D}", "The answer is"),
    "longbook_sum_eng": ("Summarize the book below in a few paragraphs.\n\n{context}", "Summary:"),
    "longdialogue_qa_eng": ("In the script below one occurrence of a character's name is replaced by "
                            "\"$$MASK$$\". Which character is it? Reply with the name only.\n\n{context}\n\n"
                            "{input}", "The masked name is"),
    "code_debug": ("Exactly one of the functions in the code below has a deliberate bug. Which one?\n\n"
                   "{context}\n\n{input}" + _OPTS + "A. {A}\nB. {B}\nC. {C}\nD. {D}", "The answer is"),
    "longbook_qa_chn": ("请阅读下面的书，然后尽量简短地回答问题。\n\n{context}\n\n问题：{input}", "答案："),
}


def _synthetic_max_new_tokens(task: str, length: int) -> int:
    if task == "math_calc":  # the answer is as long as the expression: share the window
        return min(MAX_NEW_TOKENS[task], length // 2)
    return MAX_NEW_TOKENS[task]


def _frame(task: str) -> PromptFrame:
    template = TEMPLATES[task][0]
    head, tail = template.split("{context}")
    return PromptFrame(head.replace("{input}", ""), tail.replace("{input}", _QUESTIONS.get(task, "")))


_QUESTIONS = {"passkey": "What is the pass key?", "number_string": "What is the sequence of digits?"}


def prepare_infinitebench_synthetic(task: str, length: int, budget_for: Any, n_samples: int, seed: int,
                                    tokenizer: Tokenizer, cache_dir: str | Path | None = None,
                                    verify: bool = True) -> list[Sample]:
    """Generated samples of ``task`` at ``length``; ``budget_for(max_new_tokens)`` gives the prompt
    budget (context window minus generation minus chat template). Key lines sweep depths evenly."""
    max_new = _synthetic_max_new_tokens(task, length)
    budget = budget_for(max_new)
    path = None
    if cache_dir:
        tok = re.sub(r"[^A-Za-z0-9_.-]+", "_", tokenizer.name)[-60:]
        version = generator_version("infinitebench")  # the code that writes them (sample_keys)
        path = Path(cache_dir) / "infinitebench" / f"{task}-L{length}-B{budget}-{tok}-seed{seed}-n{n_samples}-{version}.jsonl"
        if path.is_file():
            return read_samples(path)
    template, prefix_t = TEMPLATES[task]
    frame = _frame(task)
    samples = []
    for index in range(n_samples):
        rng = random.Random(f"infinitebench/{task}/{length}/{seed}/{index}")
        depth = index / (n_samples - 1) if n_samples > 1 else rng.random()
        target = ""
        if task == "math_find":
            target = MATH_FIND_TARGETS[index % len(MATH_FIND_TARGETS)]
        prefix = prefix_t.replace("{target}", target) if target else prefix_t
        prefix_tokens = count_tokens(tokenizer, prefix)
        framed = PromptFrame(frame.head.replace("{target}", target or "{target}"),
                             frame.tail.replace("{target}", target or "{target}"))
        prompt, question, answer, n_tokens, meta = make_synthetic(
            task, tokenizer, framed, budget - prefix_tokens, rng, depth, verify)
        if n_tokens + prefix_tokens > budget:
            raise ValueError(f"skipped: {task} cannot be made in {length} tokens: its fixed parts alone "
                             f"take {n_tokens + prefix_tokens} tokens, over the budget of {budget}")
        samples.append(Sample("infinitebench", task, index, length, prompt, [answer], max_new,
                              answer_prefix=prefix, n_tokens=n_tokens + prefix_tokens, meta=meta))
    if path is not None:
        write_samples(path, samples)
    return samples


def load_infinitebench_hub(task: str, max_rows: int = 0, local_path: str = "", seed: int = 0) -> list[Sample]:
    """Samples of a hub task: every row (``max_rows`` = 0, comparable with published scores) or a
    seeded random ``max_rows`` of them, recorded in each sample's meta (raises
    :class:`longctx.eval.hub.Unavailable` when unreachable)."""
    subset = load_subset(HUB_ID, None, task, local_path=local_path or None, max_rows=max_rows, seed=seed)
    rows = subset.rows
    template, prefix = TEMPLATES[task]
    samples = []
    for index, row in enumerate(rows):
        options = list(row.get("options") or [])
        answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        fields = {"context": row["context"], "input": row.get("input", "")}
        if task in ("longbook_choice_eng", "code_debug"):
            fields.update(dict(zip("ABCD", (options + [""] * 4)[:4])))
            letter = "ABCD"[options.index(answers[0])] if answers and answers[0] in options else ""
            references = [answers[0], letter]  # InfiniteBench's get_answer: [text, letter]
        else:
            references = answers
        prompt = template.format(**fields)
        samples.append(Sample("infinitebench", task, index, 0, prompt, references, MAX_NEW_TOKENS[task],
                              answer_prefix=prefix, meta={"id": row.get("id", index), "n_available": subset.n_available,
                                                          "subsample": subset.note}))
    return samples


def score_infinitebench(task: str, prediction: str, references: list[Any]) -> float:
    """One prediction's score with InfiniteBench's semantics (``src/compute_scores.py``)."""
    pred = prediction
    if task in ("passkey", "number_string"):
        return float(M.first_int_match(pred) == str(references[0]))
    if task == "kv_retrieval":
        for c in "\n:\"'.,?!{}":
            pred = pred.replace(c, " ")
        return float(str(references[0]) in pred.split())
    if task == "math_find":
        found = re.search(r"\d+\.\d+|\d+", pred)
        label = references[0]
        if found is None:
            return 0.0
        if isinstance(label, float):
            return float(float(found.group(0)) == label)
        # an integer answer: the official int("3.5") raises and stops the whole run; a decimal
        # is not the integer, so it scores 0 here
        return float(found.group(0).isdigit() and int(found.group(0)) == label)
    if task == "math_calc":
        label = references[0]
        numbers = [int(x) for x in re.split(r"[^0-9]", pred) if x]
        correct = 0
        for want, got in zip(label, numbers):
            if want != got:
                break
            correct += 1
        return correct / len(label) if label else 0.0
    if task == "code_run":
        for c in "\n.`'\":":
            pred = pred.replace(c, " ")
        words = pred.strip().split()
        try:
            return float(bool(words) and int(words[-1]) == references[0])
        except ValueError:
            return 0.0
    if task == "code_debug":
        return float(_code_debug(pred, references))
    if task == "longbook_choice_eng":
        return float(_choice(pred, references))
    if task == "longdialogue_qa_eng":
        for c in "\n:\"'.,?!{}":
            pred = pred.replace(c, " ")
        return float(str(references[0]) in [w.upper() for w in pred.split()])
    if task == "longbook_qa_eng":
        return max((M.qa_f1(pred, r) for r in references), default=0.0)
    if task == "longbook_qa_chn":
        return max((M.qa_f1_zh_chars(pred, r) for r in references), default=0.0)
    if task == "longbook_sum_eng":
        return max((M.rouge_lsum(pred, r) for r in references), default=0.0)
    raise ValueError(f"unknown InfiniteBench task {task!r}")


def _squeeze(pred: str, chars: str, words: tuple[str, ...] = ()) -> str:
    for c in chars:
        pred = pred.replace(c, " ")
    for w in words:
        pred = pred.replace(w, " ")
    while "  " in pred:
        pred = pred.replace("  ", " ")
    return pred


def _code_debug(pred: str, label: list[str]) -> bool:
    fn_name, letter = label[0], label[1]
    pred = pred.strip()  # before the letter check: " B." (after our answer prefix) is an answer
    if pred[:2] in (f"{letter}.", f"{letter}:"):
        return True
    pred = _squeeze(pred, "\n`'\"-*", ("Option", "option"))
    return bool(_after_prefix(pred, ("answer is:", "is:", "answer:", "correct option is:"), (letter, fn_name)))


def _after_prefix(pred: str, prefixes: tuple[str, ...], candidates) -> bool | None:
    """The official scorers' rule: at the first prefix found, does what follows it (after one
    separator character) start with a candidate? None when no prefix occurs."""
    for prefix in prefixes:
        idx = pred.find(prefix)
        if idx == -1:
            continue
        if len(pred) < idx + len(prefix) + 1:
            return False
        rest = pred[idx + len(prefix) + 1:]
        return any(rest.startswith(s) for s in candidates)
    return None


def _choice(pred: str, label: list[str]) -> bool:
    """En.MC; ``label`` is [option text, letter]. In the official order: strip; the first
    character if it is A-D; the whole answer equal to the option text or letter; the text
    after an answer phrase; the first word that is a substring of "ABCD"."""
    pred = pred.strip()
    if not pred:
        return False
    if pred[0] in "ABCD":
        return pred[0] in label
    if pred in label:
        return True
    pred = _squeeze(pred, "\n\"'.,?!{}")
    found = _after_prefix(pred, ("answer is:", "answer:", "answer is", "option is"), label)
    if found is not None:
        return found
    for word in pred.split():
        if word in "ABCD":  # a substring test in the official code ("AB" passes), kept as is
            return word in label
    return False
