"""longctx: million-token instruction tuning from hierarchical synthetic data.

One folder per layer, each importing only from the ones listed before it:

``core``      parameters, tokenizer, notebooks, progress (imports nothing of ours)
``llm``       the generator client, cache, limits and embedded llama.cpp server
``generate``  stage 1: books -> hierarchical + diverse QA (``qa.jsonl``)
``concat``    stage 2: QA records -> 180K..1M-token training samples
``train``     stage 3: stepwise RoPE scaling, Ulysses sequence parallelism, FSDP
``eval``      stage 4: RULER, InfiniteBench, LongBench, MMLU -> results table, and the figures

Commands: ``python -m longctx.generate | concatenate | train | evaluate | figures | demo``.
"""

__version__ = "0.1.0"
