"""What one HTTP attempt returned: classified into an answer or a failure reason.

Split from the client so that a recorded answer (:mod:`longctx.llm.replay`) goes through the
very same checks as one just received: a resumed run must take the same decisions.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from .cache import CachedResponse
from .retry import parse_retry_after
from .schema import schema_problem

__all__ = ["AttemptFailed", "parse_content", "classify_status", "parse_completion", "validate"]

_DETAIL_CHARS = 300  # server text kept in error details


class AttemptFailed(Exception):
    """One attempt failed for ``reason``; ``retry_after_s`` is the server's hint, ``response``
    the answer the server delivered when the failure is its content (length, bad_json, schema)."""

    def __init__(self, reason: str, detail: str, retry_after_s: float | None = None,
                 response: CachedResponse | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.response = response


def _strip_fence(content: str) -> str:
    # Without grammar constraints (json_object/none fallback) models like to wrap JSON in ```json.
    text = content.strip()
    if text.startswith("```") and text.endswith("```") and "\n" in text:
        text = text[text.index("\n") + 1:-3].strip()
    return text


def parse_content(content: str) -> Any:
    """JSON value of a model answer (tolerating a markdown code fence); raises ValueError."""
    return json.loads(_strip_fence(content))


def classify_status(status: int, raw: bytes, retry_after: str | None, mode: str) -> AttemptFailed:
    """The failure a non-200 answer stands for."""
    text = raw[:_DETAIL_CHARS].decode("utf-8", "replace")
    hint = parse_retry_after(retry_after)
    if status == 429:
        return AttemptFailed("429", f"HTTP 429: {text}", hint)
    if status >= 500:
        return AttemptFailed("5xx", f"HTTP {status}: {text}", hint)
    if status == 408:
        return AttemptFailed("timeout", f"HTTP 408: {text}", hint)
    lowered = text.lower()
    if status == 400 and mode != "none" and ("response_format" in lowered or "json_schema" in lowered):
        return AttemptFailed("response_format", f"HTTP 400 for response_format {mode!r}: {text}")
    return AttemptFailed("http_4xx", f"HTTP {status}: {text}")


def parse_completion(raw: bytes, completion: bool, default_model: str) -> CachedResponse:
    """The answer in a 200 body (chat or raw completion); raises ``bad_response``."""
    try:
        payload = json.loads(raw)
        choice = payload["choices"][0]
        content = choice.get("text") if completion else choice["message"].get("content")
        finish_reason = str(choice.get("finish_reason") or "")
        usage = payload.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        model = str(payload.get("model") or default_model)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        snippet = raw[:120].decode("utf-8", "replace")
        raise AttemptFailed("bad_response", f"not a chat completion ({type(err).__name__}): {snippet!r}") from None
    if not isinstance(content, str):
        raise AttemptFailed("bad_response", f"message content is {type(content).__name__}, expected a string")
    return CachedResponse(content, finish_reason, prompt_tokens, completion_tokens, model)


def validate(response: CachedResponse, schema: Mapping[str, Any] | None, accept_length: bool) -> Any:
    """The parsed JSON (None without a schema), or :class:`AttemptFailed` carrying ``response``."""
    if response.finish_reason == "length" and not accept_length:
        raise AttemptFailed("length", f"answer cut at max_tokens ({response.completion_tokens} completion tokens)",
                            response=response)
    if schema is None:
        return None
    try:
        data = parse_content(response.content)
    except ValueError as err:
        raise AttemptFailed("bad_json", f"content is not JSON ({err}): {response.content[:80]!r}",
                            response=response) from None
    problem = schema_problem(data, schema)  # type: ignore[arg-type]
    if problem:
        raise AttemptFailed("schema", f"content does not match the schema: {problem}", response=response)
    return data
