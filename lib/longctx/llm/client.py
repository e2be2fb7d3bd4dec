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
2. Replay the call's recorded rejected answers, if an earlier run was killed part-way
   (:mod:`longctx.llm.replay`): none of them is sent again.
3. Send it, at most ``max_concurrency`` in flight (one aiohttp session, one connection pool),
   fewer after a 429 (:class:`~longctx.llm.limits.AdaptiveGate`), and within the RPM / TPM
   limits (:class:`~longctx.llm.limits.RateLimiter`) when they are set.
4. Classify any failure (:data:`~longctx.llm.errors.Reason`) and retry transient ones after
   full-jitter backoff or the server's ``Retry-After``. Content failures (not JSON, schema
   mismatch, cut at ``max_tokens``) are retried too, at once (the server did answer: backoff is
   for a server that did not), with ``seed + n``: a deterministic server would otherwise return
   the same broken text. Only transient failures leave the seed alone,
   so on a deterministic server the stored answer is a function of the request alone. A
   rejected answer is recorded durably before its retry is sent.
5. Validate the content against ``schema`` client-side, always (:mod:`longctx.llm.schema`),
   whatever ``response_format`` the server enforced.
6. Store the validated answer durably, then return it: fsync happens on a writer thread, off
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

Two timeouts: ``timeout_s`` bounds a whole attempt (a slow generator on a loaded machine needs
it generous), ``stall_timeout_s`` bounds the time from the response's headers to its last byte.
A server that started answering and then stalls is caught quickly without cutting slow answers.
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
from .cache import CachedResponse, Delivery, ResponseCache, delivery_key, request_key
from .errors import CONTENT_REASONS, RETRYABLE, BudgetExhausted, LLMCallFailed, LLMSetupError
from .group_commit import GroupCommitter
from .limits import AdaptiveGate, RateLimiter, estimate_tokens
from .replay import Replay, replay_record
from .response import AttemptFailed, classify_status, parse_completion, parse_content, validate
from .retry import next_delay
from .schema import check_schema

__all__ = ["LLMConfig", "ChatResult", "LLMClient", "LLMCallFailed", "ResponseFormat"]

ResponseFormat = Literal["json_schema", "json_object", "none"]
_FORMATS: tuple[str, ...] = ("json_schema", "json_object", "none")
_STEP_DOWN = {"json_schema": "json_object", "json_object": "none"}


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
    stall_timeout_s: float = 60.0      # from the response's headers to its last byte (0 = only timeout_s)
    requests_per_minute: float = 0.0   # provider's RPM limit, kept by the client (0 = none)
    tokens_per_minute: float = 0.0     # provider's TPM limit, prompt + completion tokens (0 = none)
    rate_window_s: float = 60.0        # the window RPM / TPM are counted over (providers: a minute)
    adaptive_concurrency: bool = True  # halve the requests in flight on a 429, grow back on answers

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"LLMConfig.base_url must start with http:// or https://, got {self.base_url!r}")
        if self.response_format not in _FORMATS:
            raise ValueError(f"LLMConfig.response_format must be one of {list(_FORMATS)}, "
                             f"got {self.response_format!r}")
        for name in ("max_concurrency", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"LLMConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("timeout_s", "backoff_base_s", "backoff_max_s", "rate_window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LLMConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("stall_timeout_s", "requests_per_minute", "tokens_per_minute"):
            if getattr(self, name) < 0:
                raise ValueError(f"LLMConfig.{name} must be >= 0, got {getattr(self, name)}")
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


class LLMClient:
    """Async chat client: bounded concurrency, retries, validation, cache, accounting.

    Use as ``async with LLMClient(...) as llm``. The cache stays the caller's to close.
    ``on_done(stage, outcome)`` is called once per finished call with outcome ``"sent"``,
    ``"cached"`` or ``"failed"`` (e.g. to advance a progress bar).
    ``budget()`` is asked before every request is sent (not for cache hits); a message instead
    of None means the spending cap is reached, and the call raises :class:`BudgetExhausted`
    with it. Requests already in flight finish and are paid for and cached.
    """

    def __init__(self, config: LLMConfig, *, cache: ResponseCache | None = None,
                 accounting: Accounting | None = None,
                 on_done: Callable[[str, str], None] | None = None,
                 rng: random.Random | None = None,
                 budget: Callable[[], str | None] | None = None):
        self.config = config
        self.budget = budget
        self.cache = cache
        self.accounting = accounting if accounting is not None else Accounting()
        self.on_done = on_done
        self.response_format: str = config.response_format  # may step down on a 400
        self._rng = rng or random.Random()
        self._secret = ""
        self._session: aiohttp.ClientSession | None = None
        self._gate: AdaptiveGate | None = None
        self._rate = RateLimiter(config.requests_per_minute, config.tokens_per_minute, config.rate_window_s)
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
        self._gate = AdaptiveGate(self.config.max_concurrency, self.config.adaptive_concurrency)
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

    @property
    def concurrency(self) -> int:
        """Requests allowed in flight now: ``max_concurrency``, less after a 429 (adaptive)."""
        return self._gate.limit if self._gate is not None else self.config.max_concurrency

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
        accept_length = accept_length and schema is None  # cut JSON cannot match the schema
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.accounting.call(stage, doc_id, cached=True)
                self._done(stage, "cached")
                return ChatResult(hit.content, parse_content(hit.content) if schema is not None else None,
                                  hit.prompt_tokens, hit.completion_tokens, hit.finish_reason,
                                  cached=True, attempts=0, key=key)
            replay = replay_record(self.cache, key, lambda r: validate(r, schema, accept_length),
                                   self.config.max_attempts)
        else:
            replay = Replay()
        for reason in replay.reasons:
            self.accounting.replayed(stage, doc_id, reason)
        if replay.finished:
            return await self._finish_replayed(replay, key, stage, doc_id)
        if self.budget is not None and (stop := self.budget()) is not None:
            raise BudgetExhausted(stop)  # before the call is counted: nothing was asked
        self.accounting.call(stage, doc_id, cached=False)
        base: dict[str, Any] = {"model": self.config.model, **(extra_body or {})}
        if completion:
            base["prompt"] = messages[0]["content"]
        else:
            base["messages"] = list(messages)
        url = self.config.completions_url if completion else self.config.chat_url
        for name, value in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens)):
            if value is not None:
                base[name] = value
        tokens = estimate_tokens(sum(len(str(m.get("content", ""))) for m in messages), max_tokens)

        # A resumed call goes on from where its record ends: same seed offset, same attempt count.
        attempts, content_failures, consecutive = replay.attempts, replay.n, 0
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
            if attempts > replay.attempts and self.budget is not None and (stop := self.budget()) is not None:
                raise BudgetExhausted(stop)  # a retry: the cap may have been reached meanwhile
            attempts += 1
            try:
                response = await self._send(url, json.dumps(body).encode("utf-8"), tokens, mode, stage,
                                            doc_id, completion)
                data = validate(response, schema, accept_length)
            except AttemptFailed as err:
                if err.response is not None and self._committer is not None:
                    # Paid for and rejected: on disk before the retry goes out, so that a rerun
                    # after a kill replays this rejection instead of asking again.
                    await self._committer.record(delivery_key(key, content_failures),
                                                 Delivery(err.response, attempts, err.reason), stage, doc_id)
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
                if err.reason in CONTENT_REASONS:
                    # the server answered (a weak answer, not an overload): the retry, with the next
                    # seed, goes at once; waiting would only idle a slot (a whole run at concurrency 1)
                    content_failures += 1
                    continue
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

    async def _finish_replayed(self, replay: Replay, key: str, stage: str, doc_id: str) -> ChatResult:
        """End a call from its record alone: nothing is sent, so it counts as a cache hit."""
        self.accounting.call(stage, doc_id, cached=True)
        if replay.gave_up is not None:
            err = replay.gave_up
            self.accounting.failure(stage, doc_id, err.reason)
            self._done(stage, "failed")
            raise LLMCallFailed(err.reason, replay.attempts, self._redact(err.detail), stage=stage, doc_id=doc_id)
        assert replay.answer is not None
        response, data = replay.answer
        if self._committer is not None:
            await self._committer.put(key, response, stage, doc_id)
        self._done(stage, "cached")
        return ChatResult(response.content, data, response.prompt_tokens, response.completion_tokens,
                          response.finish_reason, cached=True, attempts=0, key=key)

    # ------------------------------------------------------------------ one attempt
    async def _send(self, url: str, body: bytes, tokens: int, mode: str, stage: str, doc_id: str,
                    completion: bool) -> CachedResponse:
        """One attempt within the limits: a concurrency slot, then room in the RPM / TPM window."""
        assert self._gate is not None
        sent_round = await self._gate.acquire()
        outcome = "other"
        try:
            start = None
            if self._rate.active:
                start, waited = await self._rate.acquire(tokens)
                if waited:
                    self.accounting.limit_event(f"{waited}_waits")
            try:
                response = await self._attempt(url, body, mode, stage, doc_id, completion)
            except AttemptFailed as err:
                if err.reason == "429":
                    outcome = "429"
                    self.accounting.limit_event("responses_429")
                raise
            outcome = "answered"
            if start is not None:
                self._rate.settle(start, response.prompt_tokens + response.completion_tokens)
            return response
        finally:
            change = await self._gate.release(sent_round, outcome)
            if change == "down":
                self.accounting.limit_event("concurrency_decreases")
                self.accounting.lowest_concurrency(self._gate.limit)
            elif change == "up":
                self.accounting.limit_event("concurrency_increases")

    async def _attempt(self, url: str, body: bytes, mode: str, stage: str, doc_id: str,
                       completion: bool) -> CachedResponse:
        """Send once (the caller holds a concurrency slot); return the server's answer or raise
        :class:`AttemptFailed`. The content is checked by the caller."""
        assert self._session is not None
        stall = self.config.stall_timeout_s or None
        try:
            self.accounting.request(stage, doc_id)
            async with self._session.post(url, data=body) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                try:
                    async with asyncio.timeout(stall):
                        raw = await resp.read()
                except TimeoutError:
                    raise AttemptFailed("timeout", f"the answer stalled: headers came, the body did not "
                                                   f"within {stall} s") from None
        except TimeoutError:  # aiohttp's timeouts subclass it (before ClientError on purpose)
            raise AttemptFailed("timeout", f"no complete answer within {self.config.timeout_s} s") from None
        except aiohttp.ClientError as err:
            raise AttemptFailed("connection", f"{type(err).__name__}: {err}") from None
        if status != 200:
            raise classify_status(status, raw, retry_after, mode)
        response = parse_completion(raw, completion, self.config.model)
        # Paid for whatever happens next.
        self.accounting.usage(stage, doc_id, response.prompt_tokens, response.completion_tokens,
                              response.prompt_tokens * self._price_in + response.completion_tokens * self._price_out)
        return response

    # ------------------------------------------------------------------ helpers
    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _done(self, stage: str, outcome: str) -> None:
        if self.on_done is not None:
            self.on_done(stage, outcome)
