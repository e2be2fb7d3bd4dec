"""Stage 1: books -> hierarchical and diverse QA (``qa.jsonl``). ``python -m longctx.generate``.

``corpus``/``austen``/``corpus_shards`` read books, ``chunking`` and ``walk`` plan the questions,
``prompts`` + ``prompts/`` word them, ``pipeline`` asks the generator (through ``longctx.llm``),
``quality`` gates the answers, ``stage`` runs a shard and writes the output, ``launch`` and
``projection`` plan cluster runs, ``status`` reads a running one. Imports ``core`` and ``llm`` only.
"""

from ..core.exports import lazy_exports

_EXPORTS = {"run": ".stage", "merge": ".stage", "main": ".stage", "shard_dir": ".stage", "RunStopped": ".stage",
            "GenerateParams": ".params"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
