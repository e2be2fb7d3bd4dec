"""InfiniteBench's synthetic tasks generated offline at any length: passkey, number string, kv
retrieval, math find, math calc and code run.

Structure follows InfiniteBench's data (``data/construct_synthetic_dataset.py`` and the released
files): a repeated noise paragraph with one key line (passkey: 5 digits; number string: 10 digits
with repeats), a JSON object of UUID pairs, a list of integers with a question about its
largest / smallest / median value, a long ``+``/``-`` expression whose intermediate results are
the answer, and a file of small Python functions whose call chain must be evaluated. Wording is
ours. Every generator sizes its context with prefix sums over units (see
:mod:`longctx.eval.haystack`) and returns ``(context, question, answer, meta)``; the prompt
frame around it comes from :mod:`longctx.eval.infinitebench`.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from typing import Any, Callable

from ..tokenizer import Tokenizer
from .haystack import PromptFrame, TokenizedUnits, count_tokens, fit_units, tokenize_units
from .ruler import NOISE

__all__ = ["SYNTHETIC", "make_synthetic"]

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


def _number_list(tok: Tokenizer, frame: PromptFrame, budget: int, rng: random.Random, depth: float,
                 verify: bool) -> Made:
    named = re.search(r"the (largest|smallest|median) number", frame.head)
    target = named.group(1) if named else ["largest", "smallest", "median"][rng.randrange(3)]
    probe = count_tokens(tok, "12, ")
    units = tokenize_units(tok, [f"{rng.randint(0, 99)}, " for _ in range(budget // max(probe - 1, 1) + 4)])
    frame = PromptFrame(frame.head.replace("{target}", target), frame.tail.replace("{target}", target))
    fit = fit_units(tok, frame, units, budget, verify=verify, fill_remainder=False)
    numbers = [int(u.strip(", ")) for u in units.take(fit.n_units)]
    if target == "median" and len(numbers) % 2 == 0 and numbers:
        numbers = numbers[:-1]  # odd count: the median is one of the numbers
    prompt = frame.head + ", ".join(map(str, numbers)) + frame.tail  # no trailing comma
    answer = {"largest": max, "smallest": min,
              "median": lambda xs: sorted(xs)[len(xs) // 2]}[target](numbers) if numbers else 0
    n_tokens = count_tokens(tok, prompt) if verify else fit.n_tokens - 1
    return prompt, target, answer, n_tokens, {"target": target, "count": len(numbers)}


def _math_calc(tok: Tokenizer, frame: PromptFrame, budget: int, rng: random.Random, depth: float,
               verify: bool) -> Made:
    first = rng.randint(0, 9)
    probe = count_tokens(tok, " + 7")
    ops, value = [], first
    for _ in range(budget // max(probe - 1, 1) + 4):
        digit = rng.randint(0, 9)
        # the running value stays >= 0: the official scorer reads digits only, not signs
        sign = "+" if value < digit or rng.random() < 0.5 else "-"
        value += digit if sign == "+" else -digit
        ops.append(f" {sign} {digit}")
    units = tokenize_units(tok, [str(first)] + ops)  # the first number leads the expression
    fit = fit_units(tok, frame, units, budget, verify=verify, fill_remainder=False)
    value, results = first, []
    for op in units.take(fit.n_units)[1:]:
        sign, digit = op.split()
        value = value + int(digit) if sign == "+" else value - int(digit)
        results.append(value)
    return fit.prompt, "", results, fit.n_tokens, {"operations": fit.n_units}


def _code_run(tok: Tokenizer, frame: PromptFrame, budget: int, rng: random.Random, depth: float,
              verify: bool) -> Made:
    """Functions ``func_i(x)``: the asked one starts a chain of 3-6 calls ending in arithmetic;
    all others are distractors with the same shapes. The answer is computed here, not exec'd."""
    n_funcs = max(budget // 18, 8)  # a definition is ~18 tokens; upper bound, fit_units trims
    names = rng.sample(range(n_funcs * 4), n_funcs)
    depth_chain = rng.randint(3, 6)

    def body(callee: int | None) -> tuple[str, Callable[[int], int]]:
        op, const = rng.choice("+-*"), rng.randint(1, 9)
        inner = f"func_{callee}(x)" if callee is not None else "x"
        fn = {"+": lambda v: v + const, "-": lambda v: v - const, "*": lambda v: v * const}[op]
        return f"    return {inner} {op} {const}\n", fn

    chain_names = names[:depth_chain]
    defs: dict[int, str] = {}
    evaluators: list[Callable[[int], int]] = []
    for i, name in enumerate(chain_names):  # chain[i] calls chain[i+1]; the last uses x only
        text, fn = body(chain_names[i + 1] if i + 1 < depth_chain else None)
        defs[name] = f"def func_{name}(x):\n{text}\n"
        evaluators.append(fn)
    distractor_names = names[depth_chain:]
    distractors = []
    for i, name in enumerate(distractor_names):
        callee = distractor_names[i + 1] if i + 1 < len(distractor_names) and rng.random() < 0.7 else None
        distractors.append(f"def func_{name}(x):\n{body(callee)[0]}\n")
    units = tokenize_units(tok, distractors)
    chain_units = [defs[n] for n in chain_names]
    positions = sorted(rng.random() for _ in chain_units)
    order = list(range(len(chain_units)))
    rng.shuffle(order)  # the chain's definitions appear in random order

    def insert(pieces: list[str]) -> list[str]:
        out = list(pieces)
        for pos, k in sorted(zip(positions, order), reverse=True):
            out.insert(int(pos * len(pieces)), chain_units[k])
        return out

    arg = rng.randint(-10, 10)
    value = arg
    for fn in reversed(evaluators):
        value = fn(value)
    call = f"func_{chain_names[0]}({arg})"
    framed = PromptFrame(frame.head, frame.tail.replace("{call}", call))
    fit = fit_units(tok, framed, units, budget, insert=insert,
                    fixed_tokens=sum(count_tokens(tok, u) for u in chain_units), verify=verify,
                    fill_remainder=False)
    return fit.prompt, call, value, fit.n_tokens, {"chain_length": depth_chain, "functions": fit.n_units + depth_chain}


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
