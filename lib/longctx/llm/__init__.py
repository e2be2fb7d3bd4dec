"""The LLM access layer: every request the pipeline makes goes through here.

=================  ====================================================================
``client``         :class:`LLMClient`, :class:`LLMConfig`: async, bounded, retrying, validating
``cache``          :class:`ResponseCache`: content-addressed, crash-safe, one SQLite file per shard;
                   valid answers and every rejected one (``deliveries``)
``replay``         a resumed call replays its recorded rejections instead of sending them again
``response``       one attempt's answer: parsed, classified, validated (same rules on replay)
``limits``         RPM / TPM windows and the concurrency that halves on 429 and grows back
``accounting``     :class:`Accounting`: requests, cache hits, retries, tokens, cost by stage/doc
``schema``         the JSON-schema subset every structured answer is checked against
``group_commit``   answers arriving during a commit share the next one (durable before returned)
``retry``          full-jitter backoff and ``Retry-After``
``errors``         :class:`LLMCallFailed` and the failure reasons; :class:`BudgetExhausted` (cost cap)
``server``         :class:`EmbeddedServer`: SmolLM2 on llama.cpp in a child process
``lifeline``       the child dies with its parent
``dry_run``        :class:`DryRunServer`: instant schema-valid answers, to project a run's cost
=================  ====================================================================
"""

from .accounting import Accounting, Counts
from .cache import CachedResponse, ResponseCache, request_key
from .client import ChatResult, LLMClient, LLMConfig
from .errors import REASONS, BudgetExhausted, LLMCallFailed, LLMSetupError
from .schema import SchemaError

__all__ = [
    "Accounting", "Counts", "CachedResponse", "ResponseCache", "request_key", "ChatResult",
    "LLMClient", "LLMConfig", "REASONS", "BudgetExhausted", "LLMCallFailed", "LLMSetupError", "SchemaError",
    "EmbeddedServer", "smollm2_gguf_path",
]


def __getattr__(name: str):
    # Imported lazily so that ``python -m longctx.llm.server`` does not find its own module
    # half-imported through this package (runpy warns, and the module would run twice).
    if name in ("EmbeddedServer", "smollm2_gguf_path"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'longctx.llm' has no attribute {name!r}")
