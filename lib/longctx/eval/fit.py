"""Length plumbing: does a sample fit the model, and if not, what happens to it (explicitly).

The window of a model holds the chat template, the prompt, the assistant prefix and the
generated tokens. :func:`prompt_budget` is what is left for prompt + prefix once generation
and template are reserved; generators size synthetic samples to it, and :func:`fit_sample`
checks every sample against it before it is sent. A sample that does not fit is handled by
the run's ``truncation`` policy, never silently:

* ``middle`` -- keep the first and last halves of the prompt's tokens (LongBench and
  InfiniteBench cut like this), record how many tokens were removed;
* ``left`` / ``right`` -- drop tokens from the start / the end;
* ``skip`` -- do not evaluate the sample; the reason is recorded.

An ``input_limit`` (InfiniteBench: 128K by default, as its official scripts) cuts every longer
input in the middle first, whatever the window.

The outcome is a :class:`Fit` per sample; the runner writes it to the predictions file and
counts truncated and skipped samples in the results table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..core.tokenizer import Tokenizer
from .haystack import count_tokens
from .sample import Sample

__all__ = ["POLICIES", "Fit", "prompt_budget", "fit_sample", "truncate_tokens"]

POLICIES = ("middle", "left", "right", "skip")


@dataclass
class Fit:
    sample: Sample | None      # the sample to send (maybe truncated); None when skipped
    prompt_tokens: int         # prompt + prefix tokens before truncation
    budget: int                # what was allowed
    truncated_tokens: int = 0
    skipped_reason: str = ""


def prompt_budget(context_window: int, max_new_tokens: int, template_tokens: int) -> int:
    """Tokens left for prompt + assistant prefix."""
    return context_window - max_new_tokens - template_tokens


def truncate_tokens(tokenizer: Tokenizer, text: str, keep: int, policy: str) -> tuple[str, int]:
    """``text`` cut to at most ``keep`` tokens by ``policy``; returns (text, tokens removed).
    The cut is re-measured after decoding (a seam can re-merge) and shaved until it fits."""
    ids = tokenizer.encode(text)
    if len(ids) <= keep:
        return text, 0
    k = keep
    while k > 0:
        if policy == "middle":  # k // 2 tokens from each end, as LongBench's pred.py and InfiniteBench's
            half = max(k // 2, 1)  # truncate_input do (an odd k leaves one token unused)
            cut = tokenizer.decode(ids[:half]) + tokenizer.decode(ids[len(ids) - half:]) if k > 1 else tokenizer.decode(ids[:k])
        elif policy == "left":
            cut = tokenizer.decode(ids[len(ids) - k:])
        elif policy == "right":
            cut = tokenizer.decode(ids[:k])
        else:
            raise ValueError(f"unknown truncation policy {policy!r}; valid: {', '.join(POLICIES)}")
        if count_tokens(tokenizer, cut) <= keep:
            return cut, len(ids) - count_tokens(tokenizer, cut)
        k -= 1
    return "", len(ids)


def fit_sample(sample: Sample, tokenizer: Tokenizer, context_window: int, template_tokens: int,
               policy: str, input_limit: int = 0) -> Fit:
    """Check ``sample`` against the window; truncate or skip it by ``policy`` when it does not fit.

    ``input_limit`` > 0: the whole input (chat template + prompt + prefix) is first held to that
    many tokens, cut in the middle whatever ``policy`` says, as InfiniteBench's scripts cut every
    prompt to 128K (``src/eval_yarn_mistral.py``: ``truncate_by_tokens(..., 128 * 1024)``, the
    generated tokens on top). The window's own budget still applies when it is smaller."""
    prefix_tokens = count_tokens(tokenizer, sample.answer_prefix)
    n = sample.n_tokens or count_tokens(tokenizer, sample.prompt) + prefix_tokens
    budget = prompt_budget(context_window, sample.max_new_tokens, template_tokens)
    limited = bool(input_limit) and input_limit - template_tokens < budget
    if limited:
        budget, policy = input_limit - template_tokens, "middle"
    if budget <= prefix_tokens:
        return Fit(None, n, budget, skipped_reason=(
            f"skipped: generation {sample.max_new_tokens} + template {template_tokens} + prefix "
            f"{prefix_tokens} tokens leave no room in the {context_window}-token window"))
    if n <= budget:
        return Fit(sample, n, budget)
    if policy == "skip":
        return Fit(None, n, budget, skipped_reason=(
            f"skipped: prompt {n} + generation {sample.max_new_tokens} + template {template_tokens} "
            f"tokens exceed the {context_window}-token window"))
    text, removed = truncate_tokens(tokenizer, sample.prompt, budget - prefix_tokens, policy)
    kept = count_tokens(tokenizer, text) + prefix_tokens
    meta = {**sample.meta, "truncation": policy, "truncated_tokens": removed, "original_tokens": n,
            "cut_by": "input_limit" if limited else "window", **({"input_limit": input_limit} if limited else {})}
    return Fit(replace(sample, prompt=text, n_tokens=kept, meta=meta), n, budget, truncated_tokens=removed)
