"""One async client for any OpenAI-compatible chat-completions endpoint.

vLLM, SGLang, llama.cpp, Together and OpenAI all accept ``POST {base_url}/chat/completions``;
this client is the only place in longctx that talks to them::

    config = LLMConfig(base_url="https://api.together.xyz/v1", model="meta-llama/...",
                       api_key_env="TOGETHER_API_KEY")
    async with LLMClient(config, cache=ResponseCache(folder, "responses-0-of-4"),
                         accounting=accounting) as llm:
        result = await llm.chat(messages, schema=QA_SCHEMA, temperature=0.7, seed=3,
                                max_tokens=512, stage="diverse", doc_id="emma")
        result.data["question"]

What a call does, in order:

1. Look the request up in the cache (:mod:`longctx.llm.cache`); a hit returns at once and takes
   no concurrency slot.
2. Send it, at most ``max_concurrency`` in flight (one aiohttp session, one connection pool).
3. Classify any failure (:data:`~longctx.llm.errors.Reason`) and retry transient ones after
   full-jitter backoff or the server's ``Retry-After``. Content failures (not JSON, schema
   mismatch, cut at ``max_tokens``) are retried too, with ``seed + n``: a deterministic server
   would otherwise return the same broken text. Only transient failures leave the seed alone,
   so on a deterministic server the stored answer is a function of the request alone.
4. Validate the content against ``schema`` client-side, always (:mod:`longctx.llm.schema`),
   whatever ``response_format`` the server enforced.
5. Store the validated answer durably, then return it: fsync happens on a writer thread, off
   the event loop, and answers arriving during a commit share the next one
   (:mod:`longctx.llm.group_commit`). A kill loses only the requests in flight and the answers
   waiting for that commit, never one already returned. After ``max_attempts`` the call raises
   :class:`LLMCallFailed`.

Quality gates beyond the schema belong to the caller, which regenerates with another seed. That
is deliberate: a gated-out answer stays cached under its own key, so a resumed run replays the
same decision from the cache instead of paying for the rejected request again.

Evaluation asks for two things structured generation does not: ``accept_length=True`` takes an
answer cut at ``max_tokens`` as final (a generation budget reached is a result there, not a
fault), and ``completion=True`` sends one raw prompt to ``/completions``, so no chat template is
applied (few-shot MMLU, LongBench's non-chat tasks). Both default to off.

``response_format`` modes: ``json_schema`` (strict, grammar-constrained on llama.cpp/vLLM),
``json_object``, ``none``. A server answering 400 about ``response_format`` makes the client step
down one mode, remember it for all later calls, and re-send (counted as reason
``response_format``, not as an attempt).

The API key is read from the environment variable *named* in the config when the client opens;
it lives only in the session's headers and is redacted from every error text.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import aiohttp

from .accounting import Accounting
from .cache import CachedResponse, ResponseCache, request_key
from .errors import CONTENT_REASONS, RETRYABLE, LLMCallFailed, LLMSetupError
from .group_commit import GroupCommitter
from .retry import next_delay, parse_retry_after
from .schema import check_schema, schema_problem

__all__ = ["LLMConfig", "ChatResult", "LLMClient", "LLMCallFailed", "ResponseFormat"]

ResponseFormat = Literal["json_schema", "json_object", "none"]
_FORMATS: tuple[str, ...] = ("json_schema", "json_object", "none")
_STEP_DOWN = {"json_schema": "json_object", "json_object": "none"}
_DETAIL_CHARS = 300  # server text kept in error details


@dataclass
class LLMConfig:
    """Where to send requests and how hard to try. The pipeline maps its params onto this."""

    base_url: str                      # OpenAI-style base, e.g. http://127.0.0.1:8080/v1
    model: str                         # model name sent with every request (and part of cache keys)
    api_key_env: str = ""              # NAME of the env var holding the key; "" = send no key
    max_concurrency: int = 32          # requests in flight at once
    timeout_s: float = 300.0           # per attempt, from send to last byte of the answer
    max_attempts: int = 6              # attempts per call before LLMCallFailed
    backoff_base_s: float = 1.0        # full-jitter backoff: uniform(0, min(max, base * 2**n))
    backoff_max_s: float = 60.0
    response_format: str = "json_schema"  # json_schema | json_object | none (when a schema is given)
    price_input_per_mtok: float = 0.0  # USD per million prompt tokens, for the cost estimate
    price_output_per_mtok: float = 0.0 # USD per million completion tokens

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"LLMConfig.base_url must start with http:// or https://, got {self.base_url!r}")
        if self.response_format not in _FORMATS:
            raise ValueError(f"LLMConfig.response_format must be one of {list(_FORMATS)}, "
                             f"got {self.response_format!r}")
        for name in ("max_concurrency", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"LLMConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("timeout_s", "backoff_base_s", "backoff_max_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LLMConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.api_key_env.startswith(("sk-", "Bearer")) or len(self.api_key_env) > 64:
            # Someone pasted the key itself; refuse before it is written to a manifest.
            raise ValueError("LLMConfig.api_key_env takes the NAME of an environment variable "
                             "(e.g. 'TOGETHER_API_KEY'), not the key")

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def completions_url(self) -> str:
        return self.base_url.rstrip("/") + "/completions"


@dataclass(frozen=True)
class ChatResult:
    """One answered call."""

    content: str              # the model's message content, as sent by the server
    data: Any                 # parsed JSON when a schema was given, else None
    prompt_tokens: int        # usage of the answering request (also for cache hits: as stored)
    completion_tokens: int
    finish_reason: str
    cached: bool              # True: answered from the cache, nothing sent
    attempts: int             # HTTP attempts this call made (0 for a cache hit)
    key: str                  # request_key(), the cache address

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


class _AttemptFailed(Exception):
    """Internal: one attempt failed for ``reason``; ``retry_after_s`` is the server's hint."""

    def __init__(self, reason: str, detail: str, retry_after_s: float | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry_after_s = retry_after_s


def _strip_fence(content: str) -> str:
    # Without grammar constraints (json_object/none fallback) models like to wrap JSON in ```json.
    text = content.strip()
    if text.startswith("```") and text.endswith("```") and "\n" in text:
        text = text[text.index("\n") + 1:-3].strip()
    return text


def parse_content(content: str) -> Any:
    """JSON value of a model answer (tolerating a markdown code fence); raises ValueError."""
    return json.loads(_strip_fence(content))


class LLMClient:
    """Async chat client: bounded concurrency, retries, validation, cache, accounting.

    Use as ``async with LLMClient(...) as llm``. The cache stays the caller's to close.
    ``on_done(stage, outcome)`` is called once per finished call with outcome ``"sent"``,
    ``"cached"`` or ``"failed"`` (e.g. to advance a progress bar).
    """

    def __init__(self, config: LLMConfig, *, cache: ResponseCache | None = None,
                 accounting: Accounting | None = None,
                 on_done: Callable[[str, str], None] | None = None,
                 rng: random.Random | None = None):
        self.config = config
        self.cache = cache
        self.accounting = accounting if accounting is not None else Accounting()
        self.on_done = on_done
        self.response_format: str = config.response_format  # may step down on a 400
        self._rng = rng or random.Random()
        self._secret = ""
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._committer: GroupCommitter | None = None
        self._checked_schemas: dict[int, Mapping[str, Any]] = {}  # id -> schema, checked once
        self._price_in = config.price_input_per_mtok / 1e6
        self._price_out = config.price_output_per_mtok / 1e6

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> "LLMClient":
        headers = {"Content-Type": "application/json"}
        if self.config.api_key_env:
            self._secret = os.environ.get(self.config.api_key_env, "")
            if not self._secret:
                raise LLMSetupError(f"environment variable {self.config.api_key_env} is empty or unset; "
                                    f"export it, or set api_key_env='' for a server without a key")
            headers["Authorization"] = f"Bearer {self._secret}"
        connector = aiohttp.TCPConnector(limit=self.config.max_concurrency, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        self._slots = asyncio.Semaphore(self.config.max_concurrency)
        if self.cache is not None:
            self._committer = GroupCommitter(self.cache)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._committer is not None:
            await self._committer.close()  # every accepted answer is committed before we leave
            self._committer = None

    def __repr__(self) -> str:  # never the key, only the variable's name
        return (f"LLMClient(base_url={self.config.base_url!r}, model={self.config.model!r}, "
                f"api_key_env={self.config.api_key_env!r}, response_format={self.response_format!r})")

    # ------------------------------------------------------------------ the call
    async def chat(self, messages: Sequence[Mapping[str, str]], *, schema: Mapping[str, Any] | None = None,
                   schema_name: str = "response", temperature: float | None = None,
                   top_p: float | None = None, seed: int | None = None, max_tokens: int | None = None,
                   stage: str = "default", doc_id: str = "", accept_length: bool = False,
                   completion: bool = False, extra_body: Mapping[str, Any] | None = None) -> ChatResult:
        """Answer ``messages``; with ``schema`` the content must be JSON matching it.

        ``accept_length``: an answer with ``finish_reason == "length"`` is returned (and cached)
        instead of retried (free text only: with a schema a cut answer is still a failure).
        ``completion``: ``messages`` is one message whose content is sent as a raw ``prompt`` to
        ``/completions`` (no chat template); ``ChatResult.content`` is the completion's text.
        ``extra_body``: server-specific fields merged into the request body (e.g. vLLM's
        ``continue_final_message``); they change the answer, so they are part of the cache key.

        Raises :class:`LLMCallFailed` when every attempt failed (or at once for a 4xx that no
        retry can fix); everything else a server does is retried.
        """
        if self._session is None:
            raise RuntimeError("LLMClient is not open; use 'async with LLMClient(...) as llm'")
        if schema is not None and self._checked_schemas.get(id(schema)) is not schema:
            check_schema(schema)
            self._checked_schemas[id(schema)] = schema  # holding it keeps its id from being reused
        if completion and (schema is not None or len(messages) != 1):
            raise ValueError("completion=True sends one raw prompt: pass exactly one message and no schema")
        # A raw prompt is keyed without a role, so it never shares a key with a chat request.
        keyed = [{"prompt": messages[0]["content"]}] if completion else messages
        key = request_key(self.config.model, keyed, temperature=temperature, top_p=top_p,
                          seed=seed, max_tokens=max_tokens, schema=schema, extra=extra_body)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.accounting.call(stage, doc_id, cached=True)
                self._done(stage, "cached")
                return ChatResult(hit.content, parse_content(hit.content) if schema is not None else None,
                                  hit.prompt_tokens, hit.completion_tokens, hit.finish_reason,
                                  cached=True, attempts=0, key=key)
        self.accounting.call(stage, doc_id, cached=False)
        base: dict[str, Any] = {"model": self.config.model, **(extra_body or {})}
        if completion:
            base["prompt"] = messages[0]["content"]
        else:
            base["messages"] = list(messages)
        url = self.config.completions_url if completion else self.config.chat_url
        accept_length = accept_length and schema is None  # cut JSON cannot match the schema
        for name, value in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens)):
            if value is not None:
                base[name] = value

        attempts = consecutive = content_failures = 0
        while True:
            mode = self.response_format if schema is not None else "none"
            body = dict(base)
            if seed is not None:
                body["seed"] = seed + content_failures
            if mode == "json_schema":
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": schema_name, "schema": schema, "strict": True}}
            elif mode == "json_object":
                body["response_format"] = {"type": "json_object"}
            attempts += 1
            try:
                async with self._slots:
                    response, data = await self._attempt(url, json.dumps(body).encode("utf-8"), schema,
                                                         mode, stage, doc_id, accept_length, completion)
            except _AttemptFailed as err:
                if err.reason == "response_format":
                    attempts -= 1  # discovering the server's abilities is not the call's fault
                    self.accounting.retry(stage, doc_id, err.reason)
                    if self.response_format == mode:
                        self.response_format = _STEP_DOWN[mode]
                    continue
                if err.reason not in RETRYABLE or attempts >= self.config.max_attempts:
                    self.accounting.failure(stage, doc_id, err.reason)
                    self._done(stage, "failed")
                    raise LLMCallFailed(err.reason, attempts, self._redact(err.detail),
                                        stage=stage, doc_id=doc_id) from None
                self.accounting.retry(stage, doc_id, err.reason)
                content_failures += err.reason in CONTENT_REASONS
                consecutive += 1
                await asyncio.sleep(next_delay(consecutive, err.retry_after_s, self.config.backoff_base_s,
                                               self.config.backoff_max_s, self._rng))
                continue
            if self._committer is not None:
                # After the slot is released: the next request need not wait for our fsync.
                # Durable before the caller sees it; group commit keeps the backlog to what
                # arrives during one commit.
                await self._committer.put(key, response, stage, doc_id)
            self._done(stage, "sent")
            return ChatResult(response.content, data, response.prompt_tokens, response.completion_tokens,
                              response.finish_reason, cached=False, attempts=attempts, key=key)

    # ------------------------------------------------------------------ one attempt
    async def _attempt(self, url: str, body: bytes, schema: Mapping[str, Any] | None, mode: str,
                       stage: str, doc_id: str, accept_length: bool,
                       completion: bool) -> tuple[CachedResponse, Any]:
        """Send once (the caller holds a concurrency slot); return the validated answer or
        raise :class:`_AttemptFailed`."""
        assert self._session is not None
        try:
            self.accounting.request(stage, doc_id)
            async with self._session.post(url, data=body) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                raw = await resp.read()
        except TimeoutError:  # aiohttp's timeouts subclass it (before ClientError on purpose)
            raise _AttemptFailed("timeout", f"no complete answer within {self.config.timeout_s} s") from None
        except aiohttp.ClientError as err:
            raise _AttemptFailed("connection", f"{type(err).__name__}: {err}") from None

        if status != 200:
            text = raw[:_DETAIL_CHARS].decode("utf-8", "replace")
            hint = parse_retry_after(retry_after)
            if status == 429:
                raise _AttemptFailed("429", f"HTTP 429: {text}", hint)
            if status >= 500:
                raise _AttemptFailed("5xx", f"HTTP {status}: {text}", hint)
            if status == 408:
                raise _AttemptFailed("timeout", f"HTTP 408: {text}", hint)
            lowered = text.lower()
            if status == 400 and mode != "none" and ("response_format" in lowered or "json_schema" in lowered):
                raise _AttemptFailed("response_format", f"HTTP 400 for response_format {mode!r}: {text}")
            raise _AttemptFailed("http_4xx", f"HTTP {status}: {text}")

        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            content = choice.get("text") if completion else choice["message"].get("content")
            finish_reason = str(choice.get("finish_reason") or "")
            usage = payload.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
            model = str(payload.get("model") or self.config.model)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            snippet = raw[:120].decode("utf-8", "replace")
            raise _AttemptFailed("bad_response", f"not a chat completion ({type(err).__name__}): {snippet!r}") from None
        # Paid for whatever happens next.
        self.accounting.usage(stage, doc_id, prompt_tokens, completion_tokens,
                              prompt_tokens * self._price_in + completion_tokens * self._price_out)

        if finish_reason == "length" and not accept_length:
            raise _AttemptFailed("length", f"answer cut at max_tokens ({completion_tokens} completion tokens)")
        if not isinstance(content, str):
            raise _AttemptFailed("bad_response", f"message content is {type(content).__name__}, expected a string")
        data = None
        if schema is not None:
            try:
                data = parse_content(content)
            except ValueError as err:
                raise _AttemptFailed("bad_json", f"content is not JSON ({err}): {content[:80]!r}") from None
            problem = schema_problem(data, schema)  # type: ignore[arg-type]
            if problem:
                raise _AttemptFailed("schema", f"content does not match the schema: {problem}")
        return CachedResponse(content, finish_reason, prompt_tokens, completion_tokens, model), data

    # ------------------------------------------------------------------ helpers
    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _done(self, stage: str, outcome: str) -> None:
        if self.on_done is not None:
            self.on_done(stage, outcome)
