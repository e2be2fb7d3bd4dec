"""A real OpenAI-style HTTP server on 127.0.0.1 whose answers a test writes as a Python function.

Stage-1 pipeline tests need a generator whose every answer is known in advance: good QA built
from the prompt's own passage, planted bad QA on cue, judge verdicts. ``answer(prompt, seed)``
gets the last user message and the request's seed and returns the JSON content to send back.
The pipeline talks to it through the real :class:`~longctx.llm.client.LLMClient` over HTTP;
every request is kept in :attr:`ScriptedServer.log` as ``(prompt, seed, content)``.
"""

from __future__ import annotations

import json
import random
import re
import threading
from typing import Any, Callable

from aiohttp import web
from threaded_app import ThreadedApp

_WORD = re.compile(r"[A-Za-z]{5,}")


def passage_words(prompt: str) -> list[str]:
    """Distinct long words of the prompt's passage(s) (the text between the passage tags)."""
    inside = re.findall(r"<passages?[^>]*>(.*?)</passages?>", prompt, re.DOTALL)
    # a prompt without passages (global, section) asks from the summaries above its instruction
    source = " ".join(inside) if inside else re.split(r"\n(?:Previous question|Write one)", prompt)[0]
    words = _WORD.findall(source)
    return list(dict.fromkeys(w.lower() for w in words))


def grounded_qa(prompt: str, seed: int) -> dict[str, str]:
    """A well-formed QA whose answer quotes the prompt's passage and whose question differs
    from any other seed's (words drawn by the seed)."""
    words = passage_words(prompt)
    rng = random.Random(seed)
    a, b, c, d = rng.sample(words, 4)
    return {"question": f"Why does {a} come before {b} while {c} follows?",
            "answer": f"Because {a} and {b} lead to {c} and {d} in the passage."}


class ScriptedServer(ThreadedApp):
    """``with ScriptedServer(answer) as server``; ``server.base_url`` ends in ``/v1``."""

    def __init__(self, answer: Callable[[str, int], dict[str, Any]]):
        super().__init__()
        self.answer = answer
        self.log: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt, seed = body["messages"][-1]["content"], body.get("seed")
        content = json.dumps(self.answer(prompt, seed))
        with self._lock:
            self.log.append((prompt, seed, content))
        return web.json_response({
            "id": "cmpl-scripted", "object": "chat.completion", "model": body.get("model", ""),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4,
                      "total_tokens": (len(prompt) + len(content)) // 4},
        })
