"""RULER's 13 tasks: registry, prompt templates, and cached preparation at any length.

The task set and knobs are RULER's (``scripts/synthetic.yaml``):

| task | kind | haystack | keys / values | needles |
| --- | --- | --- | --- | --- |
| niah_single_1 | niah | noise | words / numbers | 1 |
| niah_single_2 | niah | essay | words / numbers | 1 |
| niah_single_3 | niah | essay | words / uuids | 1 |
| niah_multikey_1 | niah | essay | words / numbers | 4 keys, ask 1 |
| niah_multikey_2 | niah | needle | words / numbers | distractor needles only |
| niah_multikey_3 | niah | needle | uuids / uuids | distractor needles only |
| niah_multivalue | niah | essay | words / numbers | 4 values of one key |
| niah_multiquery | niah | essay | words / numbers | 4 keys, ask all 4 |
| vt | variable tracking | noise | 1 chain, 4 hops | |
| cwe | common words | numbered word list | 10 common x30, others x3 | |
| fwe | frequent words | coded words, Zipf alpha=2 | top 3 | |
| qa_1 | qa | SQuAD documents | | |
| qa_2 | qa | HotpotQA documents | | |

Differences from RULER, on purpose: the essay haystack is the embedded corpus (Jane Austen's
novels by default) instead of Paul Graham's essays; the prompt wording is ours (same structure:
instruction, context, question, answer prefix); every sample is sized with the evaluated
model's tokenizer to the budget ``context_length - max_new_tokens - chat template tokens``
(RULER's fwe ignores the generation budget); words for keys and cwe come from the corpus
vocabulary instead of the ``wonderwords`` lists.

Prepared samples are cached as JSONL under ``cache_dir`` keyed by task, length, budget,
tokenizer, seed and sample count, and by the generator's code, the corpus text and the QA data
file (:mod:`longctx.eval.sample_keys`; :func:`prepare_ruler`).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from ..core.tokenizer import Tokenizer
from . import ruler_qa, ruler_tasks
from .ruler_spec import ANSWER_PREFIXES, RULER_TASKS, TEMPLATES, RulerContext, RulerTask, ruler_metric
from .sample import Sample, read_samples, write_samples
from .sample_keys import corpus_digest, data_digest, generator_version, samples_key

# The task table and templates are defined in ruler_spec and offered here with the preparation.
__all__ = ["RULER_TASKS", "RulerTask", "TEMPLATES", "ANSWER_PREFIXES", "prepare_ruler", "ruler_metric",
           "RulerContext"]


def _cache_name(task: str, length: int, budget: int, tokenizer: Tokenizer, seed: int, n: int,
                corpus: str, sources: str = "") -> str:
    tok = re.sub(r"[^A-Za-z0-9_.-]+", "_", tokenizer.name)[-60:]
    src = re.sub(r"[^A-Za-z0-9_.-]+", "_", corpus)[-40:]
    return f"{task}-L{length}-B{budget}-{tok}-seed{seed}-n{n}-{src}-{sources}.jsonl"


def _sources(spec: RulerTask, ctx: RulerContext) -> str:
    """Generator code, corpus text and (QA) data file behind a task's samples (:mod:`.sample_keys`)."""
    parts = [generator_version("ruler"), corpus_digest(ctx.haystack_corpus)]
    if spec.kind == "qa":
        dataset = spec.args["dataset"]
        local = ctx.squad_path if dataset == "squad" else ctx.hotpotqa_path
        parts.append(data_digest(local, ruler_qa.SOURCES[dataset][0]))
    return samples_key(*parts)


def prepare_ruler(task: str, length: int, budget: int, n_samples: int, seed: int,
                  ctx: RulerContext) -> list[Sample]:
    """``n_samples`` samples of ``task`` whose prompt + answer prefix take at most ``budget``
    tokens (``length`` minus generation and chat-template tokens), from cache when prepared before."""
    if task not in RULER_TASKS:
        raise ValueError(f"unknown RULER task {task!r}; valid: {', '.join(RULER_TASKS)}")
    spec = RULER_TASKS[task]
    path = None
    if ctx.cache_dir:
        path = Path(ctx.cache_dir) / "ruler" / _cache_name(task, length, budget, ctx.tokenizer, seed,
                                                           n_samples, ctx.haystack_corpus, _sources(spec, ctx))
        if path.is_file():
            return read_samples(path)
    make = {"niah": ruler_tasks.make_niah, "vt": ruler_tasks.make_vt, "cwe": ruler_tasks.make_cwe,
            "fwe": ruler_tasks.make_fwe, "qa": ruler_qa.make_qa}[spec.kind]
    samples = []
    for index in range(n_samples):
        rng = random.Random(f"ruler/{task}/{length}/{seed}/{index}")  # str seeds are stable across runs
        prompt, prefix, refs, n_tokens, meta = make(spec, ctx, length, budget, rng, index)
        if n_tokens > budget:
            raise ValueError(f"skipped: {task} cannot be made in {length} tokens: its fixed parts alone "
                             f"take {n_tokens} tokens, over the budget of {budget}")
        samples.append(Sample("ruler", task, index, length, prompt, refs, spec.tokens_to_generate,
                              answer_prefix=prefix, n_tokens=n_tokens, meta=meta))
    if path is not None:
        write_samples(path, samples)
    return samples
