"""Why an LLM request attempt failed, and the one error a caller has to handle.

Every failed attempt is classified into a :data:`Reason`. Transient reasons are retried with
backoff; after ``max_attempts`` (or at once, for a reason that no retry can fix) the call raises
:class:`LLMCallFailed`, which the pipeline catches and counts per document. Nothing else a
server does should end a run.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Reason", "REASONS", "RETRYABLE", "CONTENT_REASONS", "LLMCallFailed", "LLMSetupError", "BudgetExhausted"]

Reason = Literal[
    "429",              # rate limited (Retry-After honoured)
    "5xx",              # server error
    "timeout",          # no complete answer within timeout_s, or the body stalled past stall_timeout_s
    "connection",       # refused, reset, dropped mid-body
    "bad_response",     # HTTP 200 whose body is not a chat completion (HTML, truncated JSON, ...)
    "bad_json",         # the model's content is not JSON although a schema was given
    "schema",           # content is JSON but does not match the schema
    "length",           # finish_reason == "length": the answer was cut at max_tokens
    "response_format",  # server rejected our response_format; we stepped down and re-sent
    "http_4xx",         # any other client error (auth, context too long): retrying cannot help
]
REASONS: tuple[str, ...] = get_args(Reason)

# A 4xx other than 408/429 means the request itself is wrong: fail the call at once.
RETRYABLE: frozenset[str] = frozenset(REASONS) - {"http_4xx"}

# Failures of the generated text itself. A deterministic server returns the same text for the
# same seed, so these retries perturb the seed (see LLMClient.chat).
CONTENT_REASONS: frozenset[str] = frozenset({"bad_json", "schema", "length"})


class LLMCallFailed(Exception):
    """A chat call gave up. ``reason`` is the :data:`Reason` of the last attempt.

    The message never contains the API key: the client redacts server texts before they get here.
    """

    def __init__(self, reason: str, attempts: int, detail: str, *, stage: str = "", doc_id: str = ""):
        self.reason = reason
        self.attempts = attempts
        self.detail = detail
        self.stage = stage
        self.doc_id = doc_id
        where = f" (stage={stage!r}, doc_id={doc_id!r})" if stage or doc_id else ""
        super().__init__(f"LLM call failed after {attempts} attempt(s){where}: {reason}: {detail}")

    def __reduce__(self):  # keep the keyword-only fields when pickled across processes
        return (_rebuild, (self.reason, self.attempts, self.detail, self.stage, self.doc_id))


def _rebuild(reason: str, attempts: int, detail: str, stage: str, doc_id: str) -> LLMCallFailed:
    return LLMCallFailed(reason, attempts, detail, stage=stage, doc_id=doc_id)


class LLMSetupError(RuntimeError):
    """The LLM layer cannot start: missing package, model file or API key variable.

    The message says what was expected and which command fixes it.
    """


class BudgetExhausted(RuntimeError):
    """The run's spending cap was reached: the client sends nothing more (cache hits still answer).

    Not an :class:`LLMCallFailed`: the call did not fail, it was not made, so the pipeline must not
    count it against the document or replace it; the stage stops and a rerun with a higher cap
    asks it then.
    """
