"""Generated Math.Find, Math.Calc and Code.Run follow InfiniteBench's own construction.

The oracle is ``data/construct_synthetic_dataset.py`` of OpenBMB/InfiniteBench, read by hand:
``generate_random_list`` (Math.Find: seven targets over ``str(list)`` of 0-99 integers, the second /
third extreme found after removing every copy of the extreme, an even list's median the mean of
the middle two; Math.Calc: operands 0-99, the running value kept in [0, 99]) and
``generate_functions`` / ``build_code_run`` (Code.Run: layers of functions, each calling one of the
next layer and adding a constant in [-12, 17], the last layer returning ``x`` plus a constant; the
question calls a first-layer function on x in [-10, 10]). Expected values are computed here with
Python's own ``statistics`` / ``exec``, not with the generator's helpers.
"""

from __future__ import annotations

import ast
import re
import statistics
from collections import Counter

import pytest

from longctx.eval.infinitebench import prepare_infinitebench_synthetic, score_infinitebench
from longctx.eval.infinitebench_synth import MATH_FIND_TARGETS, math_find_answer
from longctx.core.tokenizer import load_tokenizer

ORACLE = {  # the official meaning of each question, written independently of the generator
    "largest": lambda xs: sorted(set(xs))[-1], "second largest": lambda xs: sorted(set(xs))[-2],
    "third largest": lambda xs: sorted(set(xs))[-3], "smallest": lambda xs: sorted(set(xs))[0],
    "second smallest": lambda xs: sorted(set(xs))[1], "third smallest": lambda xs: sorted(set(xs))[2],
    "median": statistics.median,  # mean of the middle two for an even count, as the official code
}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("llama3")


def _samples(task: str, length: int, n: int, tok, seed: int = 0):
    return prepare_infinitebench_synthetic(task, length, lambda m: length - m - 40, n, seed, tok)


def _listed(prompt: str) -> list[int]:
    return ast.literal_eval(re.search(r"\[[0-9, ]*\]", prompt).group(0))


def test_math_find_answers_on_hand_checked_lists():
    xs = [3, 9, 9, 7, 1, 1, 2]  # sorted: 1 1 2 3 7 9 9
    expected = {"largest": 9, "second largest": 7, "third largest": 3, "smallest": 1,
                "second smallest": 2, "third smallest": 3, "median": 3}
    assert {t: math_find_answer(xs, t) for t in MATH_FIND_TARGETS} == expected
    assert math_find_answer([4, 1, 3, 2], "median") == 2.5
    even = math_find_answer([5, 1, 5, 9], "median")  # (5 + 5) / 2: a float, as the official label
    assert even == 5.0 and isinstance(even, float)
    odd = math_find_answer([5, 1, 9], "median")
    assert odd == 5 and isinstance(odd, int)
    with pytest.raises(ValueError, match="no second largest"):
        math_find_answer([8, 8, 8], "second largest")  # the official code fails here too
    # the official scorer compares a float label as a float: "2.5" right, "2" wrong
    assert (score_infinitebench("math_find", "2.5", [2.5]), score_infinitebench("math_find", "2", [2.5])) == (1.0, 0.0)


def test_math_find_samples_ask_all_seven_targets_over_a_python_list(tok):
    samples = _samples("math_find", 4096, 7, tok)
    assert [s.meta["target"] for s in samples] == list(MATH_FIND_TARGETS)
    for s in samples:
        target, numbers = s.meta["target"], _listed(s.prompt)
        assert str(numbers) in s.prompt and len(numbers) > 1000  # printed as Python prints a list
        assert f"the {target} number" in s.prompt
        want = ORACLE[target](numbers)
        assert s.references == [want] and type(s.references[0]) is type(want)
        assert 0 <= min(numbers) and max(numbers) <= 99
        # >1000 draws reach both ends of their range (a miss has odds below 1e-5, and seeds are fixed)
        if target.endswith("largest"):   # values in [0, hi], hi drawn in [79, 99]
            assert min(numbers) == 0 and max(numbers) >= 79
        if target.endswith("smallest"):  # values in [lo, 99], lo drawn in [0, 19]
            assert min(numbers) <= 19 and max(numbers) == 99


def test_math_find_median_of_an_even_list_is_the_mean_of_the_middle_two(tok):
    parities = set()
    for length in range(2048, 2060):  # each length holds about one number more or less
        s = _samples("math_find", length, 7, tok)[6]
        numbers = _listed(s.prompt)
        assert s.meta["target"] == "median" and s.references == [statistics.median(numbers)]
        parities.add(len(numbers) % 2)
        if len(numbers) % 2 == 0:
            middle = sorted(numbers)[len(numbers) // 2 - 1:len(numbers) // 2 + 1]
            assert s.references[0] == sum(middle) / 2 and isinstance(s.references[0], float)
    assert parities == {0, 1}


def test_math_calc_operands_0_to_99_and_running_value_in_0_to_99(tok):
    operands, signs = [], Counter()
    for s in _samples("math_calc", 4096, 3, tok):
        expression = s.prompt.split("\n\n")[1]
        assert re.fullmatch(r"\d+( [+-] \d+)+", expression)
        tokens = expression.split()
        value, running = int(tokens[0]), []
        assert 0 <= value <= 99
        for sign, operand in zip(tokens[1::2], tokens[2::2]):
            operands.append(int(operand))
            signs[sign] += 1
            value = value + int(operand) if sign == "+" else value - int(operand)
            assert 0 <= value <= 99  # the official redraw keeps every intermediate result in range
            running.append(value)
        assert s.references == [running] and len(running) > 500
    assert 0 <= min(operands) and max(operands) <= 99 and max(operands) >= 90  # not single digits
    assert min(signs.values()) > 0.4 * sum(signs.values())  # a fair coin picks the sign


_DEF = re.compile(r"def func_(\d+)\(x\):\n    return (?:func_(\d+)\(x\)|x)(?: ([+-]) (\d+))?")


def test_code_run_is_a_layered_function_graph(tok):
    layer_counts = set()
    for s in _samples("code_run", 8192, 4, tok, seed=3):
        code = s.prompt.split("\n\n", 1)[1].rsplit("\n\nWhat exactly", 1)[0]
        blocks = code.split("\n\n")
        parsed = [_DEF.fullmatch(b) for b in blocks]
        assert all(parsed), [b for b, m in zip(blocks, parsed) if not m][:2]
        index = [int(m.group(1)) for m in parsed]
        assert index == sorted(set(index)) and index[0] >= 1  # distinct, listed by index
        assert len(index) >= 400  # hundreds of functions at 8K already
        callee = {int(m.group(1)): int(m.group(2)) if m.group(2) else None for m in parsed}
        constant = {int(m.group(1)): (-1 if m.group(3) == "-" else 1) * int(m.group(4) or 0) for m in parsed}
        assert all(c is None or c in callee for c in callee.values())  # no call leaves the file
        assert all(-12 <= c <= 17 for c in constant.values())
        assert all(m.group(4) is None or int(m.group(4)) > 0 for m in parsed)  # 0 is written as nothing
        assert {c > 0 for c in constant.values()} == {True, False}

        def depth(i: int) -> int:
            return 1 if callee[i] is None else 1 + depth(callee[i])

        depths = {i: depth(i) for i in index}
        n_layers = max(depths.values())
        assert n_layers in (2, 4, 6, 8, 10)
        layer_counts.add(n_layers)
        sizes = Counter(depths.values())
        inner = {sizes[d] for d in range(1, n_layers)}
        assert len(inner) == 1, sizes  # every layer but the first holds the same number of functions
        # the first layer: the same size plus the remainder of filling the budget (< one per layer),
        # give or take a few where graphs of adjacent sizes straddle the budget
        assert -3 <= sizes[n_layers] - inner.pop() < n_layers + 3
        called = set(callee.values())
        assert not any(depths[i] == n_layers and i in called for i in index)  # the first layer is never called
        call = s.prompt.split("What exactly does ")[1].split(" return")[0]
        name, arg = re.fullmatch(r"func_(\d+)\((-?\d+)\)", call).groups()
        assert depths[int(name)] == n_layers and -10 <= int(arg) <= 10  # one call per layer
        namespace: dict = {}
        exec(code, namespace)  # Python itself evaluates the listed functions
        assert s.references == [eval(call, namespace)]
    assert len(layer_counts) > 1


@pytest.mark.parametrize("task", ["math_find", "math_calc", "code_run"])
def test_unverified_sizing_is_exact(task, tok):
    """Without the final tokenisation the recorded length is still the tokenizer's count."""
    fast = prepare_infinitebench_synthetic(task, 3000, lambda m: 3000 - m - 40, 7, 1, tok, verify=False)
    checked = _samples(task, 3000, 7, tok, seed=1)
    assert [s.prompt for s in fast] == [s.prompt for s in checked]
    assert [s.n_tokens for s in fast] == [s.n_tokens for s in checked]
