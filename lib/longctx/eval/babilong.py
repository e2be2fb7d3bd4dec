"""BABILong (Kuratov et al., NeurIPS 2024): bAbI reasoning facts hidden in PG-19 text, 0 to 1M
tokens (not in the paper; it reaches lengths few benchmarks do).

Data: ``RMT-team/babilong`` (100 samples per task and length; config = length ``0k`` .. ``1M``,
split = task ``qa1`` .. ``qa5``; columns ``input``, ``question``, ``target``), or a local folder in
that layout. lm-evaluation-harness has BABILong too, but only the 1000-sample set up to 128K and
with its own prompt layout (description + few-shot turns), so it is not used to run it.

Prompt: the official structure (``babilong/prompts.py``: instruction, examples, post-prompt, the
context between ``<context>`` tags, ``Question: ...``; whitespace stripped), sent through the
model's chat template, greedy, 20 new tokens (``scripts/run_model_on_babilong.py``). The texts of
the three parts come from, in order of preference:

* ``prompts_file``: the official ``babilong/prompts.py`` of a checkout (its ``DEFAULT_PROMPTS`` is
  read as a literal, never executed): the official prompts byte for byte;
* else lm-evaluation-harness's task files (``lm_eval/tasks/babilong/babilong_qaN.yaml``): the
  instruction and post-prompt of its ``description``, the examples of its ``fewshot_config``, laid
  out as the official examples are. The harness rewords a few words of the official text (see the
  README, "Where we differ").

Score: the official ``compare_answers``: the reply's first sentence (lower-cased, cut before any
``<context>``, ``<example>`` or ``Question``) must name the target and no other label of the task
(labels named in the question do not count); accuracy x 100 per task and length.
"""

from __future__ import annotations

import ast
import functools
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .hub import Unavailable, load_subset
from .sample import Sample

__all__ = ["BABILONG_TASKS", "BABILONG_LENGTHS", "HUB_ID", "MAX_NEW_TOKENS", "babilong_prompt", "load_babilong",
           "score_babilong", "length_tokens"]

HUB_ID = "RMT-team/babilong"
MAX_NEW_TOKENS = 20  # run_model_on_babilong.py
BABILONG_LENGTHS = ("0k", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k", "256k", "512k", "1M")
# the answer vocabulary of each bAbI task (what compare_answers matches against)
BABILONG_TASKS: dict[str, tuple[str, ...]] = {
    "qa1": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa2": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa3": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa4": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa5": ("Bill", "Fred", "Jeff", "Mary", "apple", "football", "milk"),
}


def length_tokens(label: str) -> int:
    """``"4k"`` -> 4000, ``"1M"`` -> 1000000: the lengths as the leaderboard files name them."""
    number, unit = label[:-1], label[-1]
    if unit not in "kM" or not number.isdigit():
        raise ValueError(f"BABILong length {label!r} is not like 0k, 4k, 128k, 1M")
    return int(number) * (1000 if unit == "k" else 1_000_000)


@functools.lru_cache(maxsize=None)
def _official_prompts(prompts_file: str) -> dict[str, dict[str, str]]:
    tree = ast.parse(Path(prompts_file).read_text(encoding="utf-8"), prompts_file)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DEFAULT_PROMPTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{prompts_file}: no DEFAULT_PROMPTS literal (expected booydar/babilong's babilong/prompts.py)")


def _harness_prompts(task: str) -> dict[str, str]:
    try:
        path = resources.files("lm_eval") / "tasks" / "babilong" / f"babilong_{task}.yaml"
    except ModuleNotFoundError as err:
        raise Unavailable("skipped: BABILong's prompt texts come from lm-evaluation-harness's task files or "
                          "from babilong_prompts_file; install 'longctx[harness]' or set the file") from err

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    instruction, _, post_prompt = cfg["description"].strip().partition("\n")
    examples = "\n\n".join(f"<example>\n{s['input']} {s['question']}\nAnswer: {s['target']}\n</example>"
                           for s in cfg["fewshot_config"]["samples"])
    return {"instruction": instruction, "examples": examples, "post_prompt": post_prompt.replace("\n", " ")}


def babilong_prompt(task: str, context: str, question: str, prompts_file: str = "") -> str:
    """The official prompt layout with the official (``prompts_file``) or lm-eval's texts."""
    parts = _official_prompts(prompts_file)[task] if prompts_file else _harness_prompts(task)
    text = (f"{parts['instruction']}\n\n{parts['examples']}\n\n{parts['post_prompt']}\n\n"
            f"<context>\n{context.strip()}\n</context>\n\nQuestion: {question}")
    return text.strip()


def load_babilong(task: str, length: str, hub_id: str = HUB_ID, prompts_file: str = "", max_rows: int = 0,
                  seed: int = 0) -> list[Sample]:
    """Samples of one task at one length (every row by default); ``hub_id`` may be a local folder
    in the hub layout. Raises ``Unavailable`` naming the task, length and source."""
    if task not in BABILONG_TASKS:
        raise ValueError(f"BABILong task {task!r} is not one of {list(BABILONG_TASKS)}")
    try:
        subset = load_subset(hub_id, length, task, max_rows=max_rows, seed=seed)
    except Unavailable as err:
        raise Unavailable(f"{err} [babilong/{task} at {length} from {hub_id}]") from err
    samples = []
    for index, row in enumerate(subset.rows):
        missing = [c for c in ("input", "question", "target") if c not in row]
        if missing:
            raise Unavailable(f"skipped: babilong/{task} at {length} row {index} of {hub_id} has no column(s) "
                              f"{missing}; columns: {sorted(row)}")
        samples.append(Sample("babilong", task, index, length_tokens(length),
                              babilong_prompt(task, row["input"], row["question"], prompts_file),
                              [row["target"]], MAX_NEW_TOKENS, chat=True,
                              meta={"question": row["question"], "length_label": length,
                                    "prompts": "official file" if prompts_file else "lm-eval task files",
                                    "n_available": subset.n_available, "subsample": subset.note}))
    return samples


def score_babilong(task: str, prediction: str, target: str, question: str) -> float:
    """1.0 when the reply names the target and no other label of the task (official
    ``compare_answers``; hand-written because the official code is not a package)."""
    output = prediction.lower().split(".")[0]  # the first sentence only
    for marker in ("<context>", "<example>", "Question"):  # the official code cuts after lower(): "Question" never matches
        output = output.split(marker)[0]
    labels = {label.lower() for label in BABILONG_TASKS[task]}
    in_question = {label for label in labels if label in question.lower()}
    in_output = {label for label in labels if label in output} - in_question
    target = target.lower()
    if "," in target and len(target) > 3:  # several targets (qa8-style lists)
        parts = target.split(",")
        return float(all(p in in_output for p in parts) and len(in_output) == len(parts))
    return float(target in in_output and len(in_output) == 1)
