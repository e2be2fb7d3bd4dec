"""A stand-in generator for dry runs: an OpenAI-compatible server that answers at once.

``python -m longctx.generate --params FILE --dry-run`` runs the real pipeline against this server
to project what a real run will send (requests, prompt tokens, cost at the params' prices) before
any money is spent, the way curator projects cost. Its answers are schema-valid JSON built from
words of the prompt (distinct per request, so duplicate detection does not fire); it counts
prompt tokens with the Llama-3.1 tokenizer: message contents plus the chat template's 4 tokens
per message and 1 for the assistant header. Its answers fill half of each request's
``max_tokens`` (a 400-token summary budget gives a 200-token summary), so the projected
completion tokens are of a real model's order rather than a few words each. The benchmark of stage 1's request budget and the
shard/merge tests use it too.

It also measures what a server's prefix cache would reuse (:mod:`longctx.llm.prefix_cache`): each
request's messages, laid out as Llama-3.1's chat template does, go into a
:class:`~longctx.llm.prefix_cache.PrefixCacheMeter` in the order they arrive;
:meth:`DryRunServer.prefix_cache` returns its figures.

The server runs in a child process (``multiprocessing``) so it never competes with the
pipeline's event loop.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import random
import re
import socket
import time
import urllib.request

__all__ = ["DryRunServer"]

_WORDS = re.compile(r"[A-Za-z]{4,}")


def _answer(body: dict, count_tokens) -> dict:
    user = body["messages"][-1]["content"]
    rng = random.Random(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest())
    words = _WORDS.findall(user) or ["text"]
    pick = " ".join(rng.choice(words) for _ in range(8))
    schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
    if "supported" in schema.get("properties", {}):  # a judge verdict (judge_qa): the stand-in approves
        return _completion(body, json.dumps({"supported": True}), count_tokens)
    if "summary" in schema.get("properties", {}):
        key, content = "summary", {"summary": f"The passage tells how {pick} matter to the story and to its people."}
    else:
        key, content = "answer", {"question": f"Why does the passage bring together {pick}?",
                                  "answer": f"Because {' '.join(rng.choice(words) for _ in range(10))} shape what happens."}
    target = int(body.get("max_tokens") or 0) // 2
    while count_tokens(json.dumps(content)) < target:  # grow to the assumed length, ten words at a time
        content[key] += " Then " + " ".join(rng.choice(words) for _ in range(10)) + "."
    return _completion(body, json.dumps(content), count_tokens)


def _completion(body: dict, text: str, count_tokens) -> dict:
    prompt_tokens = sum(count_tokens(m["content"]) + 4 for m in body["messages"]) + 1
    completion_tokens = count_tokens(text)
    return {"id": "dry-run", "object": "chat.completion", "model": body.get("model", "dry-run"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def _serve(port: int, tokenizer: str, cache_tokens: int) -> None:
    from aiohttp import web

    from ..core.tokenizer import load_tokenizer
    from .prefix_cache import PrefixCacheMeter, llama31_chat_ids

    tok = load_tokenizer(tokenizer)
    meter = PrefixCacheMeter(cache_tokens=cache_tokens)

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        meter.add(llama31_chat_ids(body["messages"], tok))  # in arrival order: what a server's cache sees
        return web.json_response(_answer(body, lambda s: len(tok.encode(s))))

    async def prefix_cache(_: web.Request) -> web.Response:
        return web.json_response(meter.stats())

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=256 * 2**20)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    app.router.add_get("/prefix_cache", prefix_cache)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class DryRunServer:
    """``with DryRunServer() as server: ... server.base_url``"""

    def __init__(self, tokenizer: str = "llama3", startup_timeout_s: float = 60.0, cache_tokens: int = 0):
        self.tokenizer = tokenizer
        self.cache_tokens = cache_tokens  # the bounded prefix cache's size (0 = measure only unbounded)
        self.startup_timeout_s = startup_timeout_s
        self._process: multiprocessing.Process | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "DryRunServer":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(self.port, self.tokenizer, self.cache_tokens), daemon=True)
        self._process.start()
        deadline = time.time() + self.startup_timeout_s
        while time.time() < deadline:
            if not self._process.is_alive():
                raise RuntimeError(f"the dry-run server exited at start (code {self._process.exitcode})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"the dry-run server did not answer within {self.startup_timeout_s} s")

    def prefix_cache(self) -> dict:
        """The prefix-cache figures of every request received so far (PrefixCacheMeter.stats)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/prefix_cache", timeout=60) as response:
            return json.loads(response.read())

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(10)
            self._process = None
