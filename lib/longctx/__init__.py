"""longctx: million-token instruction tuning from hierarchical synthetic data.

Stages (each a module with ``python -m longctx.<stage> --params FILE``):

1. ``longctx.generate.stage``     books -> hierarchical + diverse QA (``qa.jsonl``)
2. ``longctx.concat.stage``  QA records -> 180K..1M-token training samples
3. ``longctx.train.stage``        stepwise RoPE scaling, Ulysses sequence parallelism, FSDP
4. ``longctx.eval.stage``     RULER, InfiniteBench, LongBench, MMLU -> results table
"""

__version__ = "0.1.0"
