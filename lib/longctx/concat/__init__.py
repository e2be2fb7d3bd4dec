"""Stage 2: QA records -> 180K..1M-token training samples. ``python -m longctx.concatenate``.

``qa_store`` reads stage 1's ``qa.jsonl`` (the data contract between the stages), ``select``,
``plan`` and ``cuts`` choose documents and questions (Algorithm 2; ``plan_types`` holds the
plan's data), ``layout`` and ``chat`` turn a plan into Llama-3.1 chat token ids,
``samples`` writes and reads the Parquet samples stage 3 trains on, ``stage`` runs the stages.
Imports ``core`` and, for its test corpora, ``generate``.
"""

from ..core.exports import lazy_exports

_EXPORTS = {name: ".stage" for name in ("StageSpec", "ConcatConfig", "Concatenator", "run", "stage_summary",
                                        "questions_kept", "keep_at_paper_scale", "main")}
_EXPORTS |= {"FITS": ".plan_types", "LEVELS": ".plan_types", "StageBudgetError": ".plan_types"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
