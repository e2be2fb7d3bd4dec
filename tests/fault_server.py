"""A real OpenAI-style HTTP server on 127.0.0.1 that misbehaves on cue, for the LLM client tests.

It runs an aiohttp app on its own event loop in a background thread, on a random free port.
Each request carries its script in the last user message, one line ``faults: 429,500,ok``:
the n-th time the server sees those messages (the seed may change between attempts) it plays
the n-th entry; after the list it answers ``ok``. Entries:

=========  ==================================================================================
ok         200, content ``{"answer": <digest of messages + seed>, "n": <len(messages)>}``
429        429 with ``Retry-After: <retry_after_s>`` (seconds)
429date    429 with ``Retry-After`` as an HTTP date ``retry_after_s`` (rounded up) from now
500, 503   server error
hang       sleep ``hang_s`` (longer than the client's timeout), then answer ok
stall      send the headers and half the body, then nothing until the server stops (the client's
           ``stall_timeout_s`` catches it; no slow-but-normal answer can look like this)
drop       abort the TCP connection without a response
badbody    200 whose body is truncated JSON
notjson    200, content is prose, not JSON
schema     200, content is JSON with ``answer`` of the wrong type
length     200, finish_reason ``length``, content cut mid-string
401echo    401 whose body echoes the Authorization header (a server leaking the key back)
=========  ==================================================================================

``reject_json_schema=True`` makes every request with a json_schema response_format a 400 that
names ``response_format``. Every request is appended to :attr:`FaultServer.log` (``delivered``:
the server sent a completion, valid or not); :attr:`FaultServer.max_in_flight` is the most
requests the server held at once.

Two modes for tests that must not depend on the machine's speed:

* ``freeze_after = k``: once ``k`` completions were delivered, every further request is held
  without an answer until the server stops (and does not use up its script entry), so a test can
  wait for the client to record exactly ``k`` answers and kill it with nothing else delivered.
* ``capacity = c`` with ``storm_until = m``: a provider's rate limit. A request arriving while
  ``c`` others are in flight gets 429 (``Retry-After: retry_after_s``) until the server has
  delivered ``m`` completions; then the storm is over and every request is served. Wasted
  requests are counted in the log (fault ``storm429``), whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from email.utils import formatdate
from typing import Any

from aiohttp import web


def answer_for(messages: list[dict], seed: Any) -> str:
    """The deterministic ``answer`` an ok response carries (tests compute it independently)."""
    digest = hashlib.sha256(json.dumps([messages, seed], sort_keys=True).encode()).hexdigest()
    return digest[:16]


_DELIVERING = ("ok", "notjson", "schema", "length")  # faults that deliver a completion


def script_of(messages: list[dict]) -> list[str]:
    for line in str(messages[-1].get("content", "")).splitlines():
        if line.startswith("faults:"):
            return [f.strip() for f in line[len("faults:"):].split(",") if f.strip()]
    return []


class FaultServer:
    """Start with ``with FaultServer(...) as server``; ``server.base_url`` ends in ``/v1``."""

    def __init__(self, *, delay_s: float = 0.0, hang_s: float = 3.0, retry_after_s: float = 1.0,
                 reject_json_schema: bool = False, capacity: int | None = None, storm_until: int = 0):
        self.delay_s, self.hang_s, self.retry_after_s = delay_s, hang_s, retry_after_s
        self.reject_json_schema = reject_json_schema
        self.capacity, self.storm_until = capacity, storm_until
        self.freeze_after: int | None = None  # settable between runs; see the module doc
        self.delivered = 0                    # completions granted so far (valid or not)
        self.log: list[dict] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self.base_url = ""

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "FaultServer":
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _stop(self) -> None:
        self._stopping.set()
        await self._runner.cleanup()
        # handlers still sleeping in a "hang" would otherwise be destroyed pending
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _start(self) -> int:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        # shutdown_timeout: do not wait at exit for handlers still sleeping in a "hang"
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        return self._runner.addresses[0][1]

    def requests_for(self, marker: str) -> list[dict]:
        """Log entries whose last user message contains ``marker``."""
        with self._lock:
            return [e for e in self.log if marker in e["content"]]

    # ------------------------------------------------------------------ handler
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body["messages"]
        identity = json.dumps(messages, sort_keys=True)
        script = script_of(messages)
        fmt = (body.get("response_format") or {}).get("type", "none")
        with self._lock:
            n = self._seen.get(identity, 0)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            fault = script[n] if n < len(script) else "ok"
            if self.reject_json_schema and fmt == "json_schema":
                fault = "400rf"
            if self.capacity is not None and self.delivered < self.storm_until and self._in_flight > self.capacity:
                fault = "storm429"
            elif fault in _DELIVERING and self.freeze_after is not None and self.delivered >= self.freeze_after:
                fault = "frozen"  # its script entry stays unused for the next time it is sent
            else:
                self._seen[identity] = n + 1
            self.delivered += fault in _DELIVERING
            entry = {"t": time.monotonic(), "content": messages[-1]["content"], "attempt": n, "fault": fault,
                     "seed": body.get("seed"), "response_format": fmt, "delivered": fault in _DELIVERING,
                     "in_flight": self._in_flight, "authorization": request.headers.get("Authorization", "")}
            self.log.append(entry)
        try:
            return await self._play(fault, request, messages, body.get("seed"))
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _play(self, fault: str, request: web.Request, messages: list[dict], seed: Any) -> web.StreamResponse:
        if fault == "frozen":
            await self._stopping.wait()
            return web.Response(status=503)  # the server is stopping; nobody reads this
        if fault == "storm429":  # at once, as providers do: a rejected request holds no capacity
            return web.json_response({"error": "rate limit"}, status=429,
                                     headers={"Retry-After": f"{self.retry_after_s:g}"})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if fault == "stall":
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                               "Content-Length": "1000"})
            await response.prepare(request)
            await response.write(b'{"choices": [')
            await self._stopping.wait()
            return web.Response(status=503)  # the server is stopping; nobody reads this
        if fault == "429":
            return web.json_response({"error": "slow down"}, status=429,
                                     headers={"Retry-After": f"{self.retry_after_s:g}"})
        if fault == "429date":
            when = formatdate(math.ceil(time.time() + self.retry_after_s) + 1, usegmt=True)
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": when})
        if fault in ("500", "503"):
            return web.json_response({"error": "boom"}, status=int(fault))
        if fault == "400rf":
            return web.json_response({"error": {"message": "response_format type json_schema is not supported"}},
                                     status=400)
        if fault == "401echo":
            return web.json_response({"error": f"invalid key in {request.headers.get('Authorization')}"},
                                     status=401)
        if fault == "drop":
            request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
        if fault == "badbody":
            return web.Response(body=b'{"choices": [{"message": {"content": "{\\"ans', content_type="application/json")
        content, finish = json.dumps({"answer": answer_for(messages, seed), "n": len(messages)}), "stop"
        if fault == "notjson":
            content = "Sure! Here is a question about the text."
        elif fault == "schema":
            content = json.dumps({"answer": 42, "n": len(messages)})
        elif fault == "length":
            content, finish = content[:12], "length"
        return web.json_response({
            "id": "cmpl-test", "object": "chat.completion", "model": "fault-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })
