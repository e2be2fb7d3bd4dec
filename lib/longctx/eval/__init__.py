"""Stage 4: evaluation from 4K to 1M tokens (RULER, InfiniteBench, LongBench, MMLU), and the
paper's figures. ``python -m longctx.evaluate`` and ``python -m longctx.figures``.

=====================  ===========================================================================
``haystack``           token-exact sizing: units tokenised once, prefix sums, needles by position
``ruler``              RULER's 13 tasks: cached preparation at any length
``ruler_spec``         RULER's task table, templates and the context the generators share
``ruler_tasks``        niah (8 variants), variable tracking, common / frequent words
``ruler_qa``           qa_1 (SQuAD) and qa_2 (HotpotQA) with distractor paragraphs
``infinitebench``      12 tasks: 6 generated offline, 6 from the hub; official scoring
``infinitebench_synth`` passkey, number string, kv retrieval, math find / calc, code run
``longbench``          LongBench v1's 21 data sets, official metrics and post-processing
``mmlu``               5-shot MMLU, micro-averaged accuracy
``metrics``            every scoring function, official semantics and libraries
``provenance``         segmenter, scoring library and data subset behind a results row
``fit``                the window budget and the explicit truncation / skip policy
``backends``           local HF model and OpenAI-compatible server behind one interface
``hub``                ``datasets`` loading (whole sets, or marked subsets), "skipped: not reachable"
``results``            the tidy results table and the paper's reported numbers
``runner``             prepare -> fit -> generate -> score -> append rows; answer cache by fingerprint; merge
``shards``             the task x length work list and its balanced split over servers
``sample_keys``        prepared samples keyed by generator code, corpus and data file digests
``launch``             SLURM chain per checkpoint (slurm/evaluate.sbatch), TP choice, projection
``hf_server``          OpenAI-compatible stand-in for vLLM on CPU (transformers), SERVER=transformers
``params``             :class:`EvalConfig`
``stage``              the stage's command: parameters -> backend -> results table
``figures``            the paper's figures and tables from results tables
=====================  ===========================================================================

Imports ``core``, ``llm``, ``generate`` (the haystack corpus) and ``train`` (RoPE settings of a
checkpoint).
"""

from ..core.exports import lazy_exports

_EXPORTS = {"EvalConfig": ".params", "evaluate": ".stage", "main": ".stage", "QUICK_ROWS": ".stage",
            "FiguresConfig": ".figures", "make_figures": ".figures", "open_backend": ".runner",
            "run_suite": ".runner"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
