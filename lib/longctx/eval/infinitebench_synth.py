"""InfiniteBench's synthetic tasks generated offline at any length: passkey, number string, kv
retrieval, math find, math calc and code run.

Construction follows InfiniteBench's ``data/construct_synthetic_dataset.py``: a repeated noise
paragraph with one key line (passkey: 5 digits; number string: 10 digits with repeats), a JSON
object of UUID pairs, a Python list of integers 0-99 with one of seven questions (largest, second
and third largest, smallest, second and third smallest, median), a ``+``/``-`` expression over
0-99 whose running value stays in [0, 99] and whose intermediate results are the answer, and a
file of functions forming a 2-10 layer call graph whose value at one call must be worked out.
Only the lengths differ: the official files have fixed sizes (60K numbers, 30K operands, ~550
functions), ours fill the evaluated length. Wording is ours. Every generator sizes its context
with prefix sums over units (see :mod:`longctx.eval.haystack`) and returns ``(context, question,
answer, meta)``; the prompt frame around it comes from :mod:`longctx.eval.infinitebench`.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..core.tokenizer import Tokenizer
from .haystack import PromptFrame, TokenizedUnits, count_tokens, fit_units, seam_delta, tokenize_units
from .ruler_spec import NOISE

__all__ = ["SYNTHETIC", "make_synthetic", "MATH_FIND_TARGETS", "math_find_answer", "CODE_RUN_LAYERS"]

Made = tuple[str, str, Any, int, dict[str, Any]]  # prompt, question, answer, n_tokens, meta


def _noise_task(line: str, key: str, question: str) -> Callable[..., Made]:
    def make(tok: Tokenizer, frame: PromptFrame, budget: int, rng: random.Random, depth: float,
             verify: bool) -> Made:
        needle = line.format(key=key_value(rng)) + "\n"
        units = TokenizedUnits([NOISE + "\n"], [count_tokens(tok, NOISE + "\n")])
        fit = fit_units(tok, frame, units, budget, insert=lambda p: p[:int(depth * len(p))] + [needle] + p[int(depth * len(p)):],
                        fixed_tokens=count_tokens(tok, needle), verify=verify)
        answer = needle.split(" is ")[1].split(".")[0]
        return fit.prompt, question, answer, fit.n_tokens, {"depth": depth, "noise_units": fit.n_units}

    key_value = {"passkey": lambda r: "".join(str(r.randint(0, 9)) for _ in range(5)),
                 "number_string": _digit_string}[key]
    return make


def _digit_string(rng: random.Random) -> str:
    """10 digits: 5 random ones, then 5 duplications at random places (InfiniteBench's recipe)."""
    digits = [str(rng.randint(0, 9)) for _ in range(5)]
    for k in range(5):
        pos = rng.randint(0, 5 + k - 1)
        digits.insert(pos, digits[pos])
    return "".join(digits)


def _kv_retrieval(tok: Tokenizer, frame: PromptFrame, budget: int, rng: random.Random, depth: float,
                  verify: bool) -> Made:
    def pair() -> str:
        # leading space, trailing comma: the pieces then tokenise additively
        return f' "{uuid.UUID(int=rng.getrandbits(128), version=4)}": "{uuid.UUID(int=rng.getrandbits(128), version=4)}",'

    probe = count_tokens(tok, pair())
    units = tokenize_units(tok, [pair() for _ in range(budget // max(probe - 6, 1) + 4)])
    key = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    value = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    target = f' "{key}": "{value}",'
    head = frame.head + "{"
    tail_frame = PromptFrame(head, "}" + frame.tail.replace("{key}", key))
    fit = fit_units(tok, tail_frame, units, budget,
                    insert=lambda p: p[:int(depth * len(p))] + [target] + p[int(depth * len(p)):],
                    fixed_tokens=count_tokens(tok, target), verify=verify, fill_remainder=False)
    prompt = fit.prompt.replace(",}", "}")  # the last pair's comma (one token; verify counts it)
    return prompt, "", value, count_tokens(tok, prompt) if verify else fit.n_tokens - 1, {"depth": depth, "pairs": fit.n_units + 1}


# Math.Find's seven questions (``build_math_find``), as the frame names them ("the {target} number")
MATH_FIND_TARGETS = ("largest", "second largest", "third largest", "smallest", "second smallest",
                     "third smallest", "median")
_TARGET_IN_FRAME = re.compile(r"the ((?:second |third )?(?:largest|smallest)|median) number")


def math_find_answer(numbers: Sequence[int], target: str) -> int | float:
    """InfiniteBench's answer: the second / third largest (smallest) is the second / third DISTINCT
    value (the official code removes every copy of the extreme before looking again); the median
    of an even-length list is the mean of the middle two, a float as Python's ``/`` gives it."""
    if target == "median":
        ordered, mid = sorted(numbers), len(numbers) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    rank = {"second": 1, "third": 2}.get(target.split()[0], 0)
    distinct = sorted(set(numbers), reverse=target.endswith("largest"))
    if len(distinct) <= rank:
        raise ValueError(f"skipped: math_find: {len(numbers)} numbers hold no {target} value")
    return distinct[rank]


def _number_list(tok: Tokenizer, frame: PromptFrame, budget: int, rng: random.Random, depth: float,
                 verify: bool) -> Made:
    """Math.Find: integers printed as a Python list. As in ``generate_random_list``: for the
    largest kinds the values are drawn from [0, hi] with hi in [79, 99]; for the smallest kinds from
    [lo, 99] with lo in [0, 19]; for the median either way, by a coin."""
    named = _TARGET_IN_FRAME.search(frame.head)
    target = named.group(1) if named else MATH_FIND_TARGETS[rng.randrange(len(MATH_FIND_TARGETS))]
    low_side = target.endswith("smallest") or (target == "median" and rng.random() > 0.5)
    lo, hi = (rng.randint(0, 19), 99) if low_side else (0, rng.randint(79, 99))
    upper = budget // max(count_tokens(tok, ", 12") - 1, 1) + 4  # more numbers than can fit
    values = [rng.randint(lo, hi) for _ in range(upper)]
    # units "12", ", 7", ", 85": joined they are str(list) without its brackets, which the frame holds
    units = tokenize_units(tok, [str(values[0])] + [f", {v}" for v in values[1:]])
    framed = PromptFrame(frame.head + "[", "]" + frame.tail)
    fit = fit_units(tok, framed, units, budget, verify=verify, fill_remainder=False)
    numbers = values[:fit.n_units]
    answer = math_find_answer(numbers, target) if numbers else 0
    return fit.prompt, target, answer, fit.n_tokens, {"target": target, "count": len(numbers), "range": [lo, hi]}


def _math_calc(tok: Tokenizer, frame: PromptFrame, budget: int, rng: random.Random, depth: float,
               verify: bool) -> Made:
    """Math.Calc as ``generate_random_list("expression")`` builds it: operands in [0, 99]; each step
    adds or subtracts by a fair coin, and an operand that would take the running value past 99
    (below 0) is drawn again from what keeps it in [0, 99]. The answer is every running value."""
    upper = budget // max(count_tokens(tok, " + 12") - 1, 1) + 4
    value = rng.randint(0, 99)
    pieces, values = [str(value)], []
    for _ in range(upper):
        operand = rng.randint(0, 99)
        if rng.random() > 0.5:
            operand = operand if value + operand <= 99 else rng.randint(0, 99 - value)
            value += operand
            pieces.append(f" + {operand}")
        else:
            operand = operand if value - operand >= 0 else rng.randint(0, value)
            value -= operand
            pieces.append(f" - {operand}")
        values.append(value)
    fit = fit_units(tok, frame, tokenize_units(tok, pieces), budget, verify=verify, fill_remainder=False)
    operations = max(fit.n_units - 1, 0)
    return fit.prompt, "", values[:operations], fit.n_tokens, {"operations": operations}


CODE_RUN_LAYERS = (2, 4, 6, 8, 10)  # build_code_run's n_list: layers of the call graph


def _definition(index: int, callee: int | None, addition: int) -> str:
    """One function as ``generate_functions`` writes it, with the blank line after it."""
    inner = f"func_{callee}(x)" if callee is not None else "x"
    tail = "" if addition == 0 else f" - {-addition}" if addition < 0 else f" + {addition}"
    return f"def func_{index}(x):\n    return {inner}{tail}\n\n"


def _function_graph(rng: random.Random, n_layers: int, per_layer: int,
                    first_layer: int) -> tuple[list[list[int]], dict[int, tuple[int | None, int]]]:
    """InfiniteBench's call graph: distinct random indices in [1, 2 x count], split into layers;
    a function of layer i calls a random one of layer i + 1 and adds a constant in [-12, 17]; the
    last layer returns ``x`` plus its constant. Layer 0 (called by nobody) gets ``first_layer``
    functions, the others ``per_layer``. Returns the layers and index -> (callee, constant)."""
    total = first_layer + per_layer * (n_layers - 1)
    ids = rng.sample(range(1, 2 * total + 1), total)
    layers = [ids[:first_layer]] + [ids[first_layer + k * per_layer:first_layer + (k + 1) * per_layer]
                                    for k in range(n_layers - 1)]
    calls: dict[int, tuple[int | None, int]] = {}
    for i, layer in enumerate(layers):
        for index in layer:
            calls[index] = (rng.choice(layers[i + 1]) if i + 1 < n_layers else None, rng.randint(-12, 17))
    return layers, calls


@dataclass
class _FittedGraph:
    k: int                     # first-layer functions kept
    first: list[int]           # first-layer indices, in drawing order (a prefix is kept)
    rest: list[int]            # every other function
    calls: dict[int, tuple[int | None, int]]
    texts: dict[int, str]
    tail: str                  # the frame's tail with the call filled in
    n_tokens: int              # exact, from additive units and measured seams


def _fit_graph(tok: Tokenizer, frame: PromptFrame, budget: int, n_layers: int, per_layer: int, arg: int,
               seed: int) -> _FittedGraph:
    """The graph with ``per_layer`` functions per layer and as many first-layer ones as fit."""
    # one graph per size, seeded by it, so the search is deterministic
    layers, calls = _function_graph(random.Random(f"{seed}/{per_layer}"), n_layers, per_layer, 2 * per_layer + 4)
    first, rest = layers[0], [i for layer in layers[1:] for i in layer]
    texts = {i: _definition(i, *calls[i]) for i in calls}
    units = tokenize_units(tok, [texts[i] for i in first + rest])
    first_cum = np.concatenate(([0], np.cumsum(units.lengths[:len(first)])))
    tail = frame.tail.replace("{call}", f"func_{first[0]}({arg})")
    fixed = count_tokens(tok, frame.head) + count_tokens(tok, tail) + int(units.lengths[len(first):].sum())

    def cost(k: int) -> int:  # definitions are additive units; the seams and the stripped end are measured
        chosen = sorted(first[:k] + rest)
        opening, closing = texts[chosen[0]], texts[chosen[-1]]
        return (fixed + int(first_cum[k]) + seam_delta(tok, frame.head, opening)
                + seam_delta(tok, closing.rstrip(), tail)
                + count_tokens(tok, closing.rstrip()) - count_tokens(tok, closing))

    k = max(int(np.searchsorted(first_cum, budget - cost(0), side="right")) - 1, 1)
    while k > 1 and cost(k) > budget:
        k -= 1
    while k < len(first) and cost(k + 1) <= budget:
        k += 1
    return _FittedGraph(k, first, rest, calls, texts, tail, cost(k))


def _code_run(tok: Tokenizer, frame: PromptFrame, budget: int, rng: random.Random, depth: float,
              verify: bool) -> Made:
    """Code.Run as ``build_code_run`` makes it: the functions of a 2-10 layer call graph listed by
    index; the question calls a first-layer function on x in [-10, 10], so the answer takes one call
    per layer. The official file holds ~550 functions; here their number follows the budget: every
    layer but the first holds ``per_layer`` functions, the first (which nothing calls, so any number
    of its functions can be left out) as many as fit: ``per_layer`` plus the remainder (< n_layers)
    that the official ``int(550 / n)`` per layer drops, give or take a few where graphs of adjacent
    sizes straddle the budget."""
    n_layers = rng.choice(CODE_RUN_LAYERS)
    arg = rng.randint(-10, 10)
    seed = rng.getrandbits(64)
    room = budget - count_tokens(tok, frame.head) - count_tokens(tok, frame.tail) - 8
    per_layer = max(room // (count_tokens(tok, _definition(100, 100, 10)) * n_layers), 1)
    fitted: dict[int, _FittedGraph] = {}
    while per_layer not in fitted:  # to the size whose first layer takes only the remainder
        fitted[per_layer] = graph = _fit_graph(tok, frame, budget, n_layers, per_layer, arg, seed)
        per_layer = max((per_layer * (n_layers - 1) + graph.k) // n_layers, 1)

    def off(p: int) -> int:  # how far the first layer is outside [p, p + n_layers)
        return max(p - fitted[p].k, fitted[p].k - p - n_layers + 1, 0)

    per_layer = min(fitted, key=lambda p: (off(p), -p))
    graph = fitted[per_layer]
    chosen = sorted(graph.first[:graph.k] + graph.rest)
    prompt = frame.head + "".join(graph.texts[i] for i in chosen).strip() + graph.tail
    value, index = arg, graph.first[0]
    while index is not None:  # func_i(x) = callee(x) + c: the constants along the chain add up
        index, addition = graph.calls[index]
        value += addition
    n_tokens = count_tokens(tok, prompt) if verify else graph.n_tokens
    return prompt, f"func_{graph.first[0]}({arg})", value, n_tokens, {
        "layers": n_layers, "functions": len(chosen), "per_layer": per_layer, "first_layer": graph.k}


SYNTHETIC: dict[str, Callable[..., Made]] = {
    "passkey": _noise_task("The pass key is {key}. Remember it. {key} is the pass key.", "passkey",
                           "What is the pass key?"),
    "number_string": _noise_task("The sequence of digits is {key}. Remember it. {key} is the sequence of digits.",
                                 "number_string", "What is the sequence of digits?"),
    "kv_retrieval": _kv_retrieval,
    "math_find": _number_list,
    "math_calc": _math_calc,
    "code_run": _code_run,
}


def make_synthetic(task: str, tok: Tokenizer, frame: PromptFrame, budget: int, rng: random.Random,
                   depth: float, verify: bool = True) -> Made:
    """One sample of ``task`` filling ``frame`` to ``budget`` tokens; ``depth`` in [0, 1] places the
    key line / pair (passkey, number string, kv retrieval)."""
    return SYNTHETIC[task](tok, frame, budget, rng, depth, verify)


def dumps_answer(answer: Any) -> str:
    return json.dumps(answer)
