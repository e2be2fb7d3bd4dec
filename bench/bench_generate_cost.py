"""Stage 1 request budget: LLM calls and prompt tokens per 1,000 book tokens, default settings.

Runs the real pipeline (``longctx.generate.run``) with the paper's method settings (4,096-token
chunks, 12,288-token sections, 25 hierarchical + 50 diverse questions) over Jane Austen's six
novels against a local OpenAI-compatible server that answers at once with valid, distinct JSON.
The server counts prompt tokens with the Llama-3.1 tokenizer (message contents plus the chat
template's 4 tokens per message and 1 for the assistant header), so the figures are what a
Llama/Qwen-class endpoint would bill, independent of generator speed. It also reports the
pipeline's own overhead per request (wall time with a zero-latency server).

    python bench/bench_generate_cost.py            # writes bench/results/generate_cost.{md,csv}
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import platform
import random
import re
import socket
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int) -> None:
    """A zero-latency chat-completions server answering schema-valid, distinct JSON."""
    from aiohttp import web

    from longctx.tokenizer import load_tokenizer

    tok = load_tokenizer("llama3")
    words_re = re.compile(r"[A-Za-z]{4,}")

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        prompt_tokens = sum(len(tok.encode(m["content"])) + 4 for m in body["messages"]) + 1
        user = body["messages"][-1]["content"]
        rng = random.Random(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest())
        words = words_re.findall(user) or ["text"]
        pick = " ".join(rng.choice(words) for _ in range(8))
        props = body.get("response_format", {}).get("json_schema", {}).get("schema", {}).get("properties", {})
        if "summary" in props:
            content = {"summary": f"The passage tells how {pick} matter to the story and to its people."}
        else:
            content = {"question": f"Why does the passage bring together {pick}?",
                       "answer": f"Because {' '.join(rng.choice(words) for _ in range(10))} shape what happens."}
        text = json.dumps(content)
        return web.json_response({
            "id": "bench", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(tok.encode(text)),
                      "total_tokens": prompt_tokens + len(tok.encode(text))}})

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def main() -> int:
    from longctx import generate
    from longctx.config import from_mapping
    from longctx.generate_params import GenerateParams

    port = _free_port()
    server = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    server.start()
    time.sleep(3.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            params = from_mapping(GenerateParams, {
                "corpus": "austen", "output_dir": tmp, "llm_base_url": f"http://127.0.0.1:{port}/v1",
                "llm_model": "bench", "progress": False})
            started = time.perf_counter()
            manifest = generate.run(params)
            wall = time.perf_counter() - started
    finally:
        server.terminate()
    totals, counts = manifest["totals"], manifest["counts"]
    rows = [
        ("documents", counts["documents_written"]),
        ("book tokens", manifest["book_tokens"]),
        ("LLM calls", totals["calls"]),
        ("LLM calls per 1,000 book tokens", totals["llm_calls_per_1000_book_tokens"]),
        ("prompt tokens sent", totals["prompt_tokens"]),
        ("prompt tokens per 1,000 book tokens", totals["prompt_tokens_per_1000_book_tokens"]),
        ("completion tokens", totals["completion_tokens"]),
        ("rejected generations (dedup etc.)", counts["rejected_total"]),
        ("pipeline wall time with a zero-latency server (s)", round(wall, 1)),
        ("pipeline overhead per call (ms)", round(1000 * wall / max(1, totals["calls"]), 2)),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "generate_cost.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("metric", "value"), *rows])
    lines = [
        "# Stage 1 request budget (default settings)",
        "",
        f"{date.today()}, {platform.machine()}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}.",
        "Command: `python bench/bench_generate_cost.py`. Corpus: Jane Austen's six novels; settings: "
        "4,096-token chunks, 12,288-token sections, 25 hierarchical + 50 diverse questions per book; "
        "server: local, zero latency, prompt tokens counted with the Llama-3.1 tokenizer.",
        "",
        "| metric | value |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows],
    ]
    (RESULTS / "generate_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
