"""The OpenAI-compatible evaluation backend sends every request through ``LLMClient``.

Against a scripted local server: what each request carries (greedy, the sample's budget, the
chat or raw-completion endpoint, the fields each kind of server needs to continue an answer
prefix), that a cut answer is a result, that a failed request becomes a reported failed
generation, and that a repeated ``generate`` is answered from the cache. Against the embedded
llama.cpp SmolLM2: the answer continues the prefix (it equals the raw completion of the prompt
that ends inside the assistant turn, and differs from what the prefix-in-the-user-turn request
gets), and a second evaluation run over the same output folder sends nothing and reproduces the
first run's predictions.
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
from aiohttp import web
from test_eval_fixtures import corpus_dir, mmlu_rows, write_jsonl
from threaded_app import ThreadedApp

from longctx.core.config import from_mapping
from longctx.eval.backends import OpenAIBackend, detect_server
from longctx.eval.params import EvalConfig
from longctx.eval.runner import open_backend, run_suite
from longctx.eval.sample import Sample


class ScriptedServer(ThreadedApp):
    """``/v1/chat/completions`` and ``/v1/completions`` on a free port, in a background thread.

    Answers ``"chat answer"`` / ``"raw answer"``, cut (``finish_reason: length``) when the prompt
    contains ``CUT``; prompts containing ``BROKEN`` get a 500. A final assistant message sent
    without ``continue_final_message`` is echoed before the answer, as llama.cpp does (vLLM and
    SGLang return the continuation only). ``GET /v1/models`` names ``owner`` as the model's owner
    (404 when None). Every (path, body) is logged.
    """

    def __init__(self, owner: str | None = None):
        super().__init__()
        self.owner = owner
        self.log: list[tuple[str, dict]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._answer)
        app.router.add_post("/v1/completions", self._answer)
        if self.owner:
            app.router.add_get("/v1/models", self._models)

    async def _models(self, request: web.Request) -> web.Response:
        card = {"id": "fake", "object": "model", "owned_by": self.owner}
        return web.json_response({"object": "list", "data": [card]})

    async def _answer(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.log.append((request.path, body))
        prompt = body.get("prompt") or json.dumps(body.get("messages"))
        if "BROKEN" in prompt:
            return web.json_response({"error": "boom"}, status=500)
        raw = request.path == "/v1/completions"
        messages = body.get("messages", [])
        continued = messages and messages[-1]["role"] == "assistant"
        echo = messages[-1]["content"] if continued and "continue_final_message" not in body else ""
        choice = {"index": 0, "finish_reason": "length" if "CUT" in prompt else "stop"}
        choice.update({"text": "raw answer"} if raw
                      else {"message": {"role": "assistant", "content": echo + " chat answer"}})
        return web.json_response({"model": body["model"], "choices": [choice],
                                  "usage": {"prompt_tokens": 11, "completion_tokens": 3}})


def sample(task: str, prompt: str, max_new: int, **kw) -> Sample:
    return Sample("ruler", task, 0, 1024, prompt, ["x"], max_new, **kw)


def test_requests_go_through_the_client_and_repeat_from_the_cache(tmp_path):
    samples = [sample("chat", "Where is the key? CUT", 7, answer_prefix="The key is"),
               sample("raw", "Q: 2+2?\nA:", 3, chat=False),
               sample("down", "BROKEN", 5)]
    with ScriptedServer() as server:
        backend = OpenAIBackend(server.base_url, "fake", context_window=4096, template_tokens=8,
                                cache_dir=tmp_path / "cache", server="llamacpp")
        backend.llm_config.max_attempts, backend.llm_config.backoff_base_s = 2, 0.01
        first = backend.generate(samples)
        sent_first = list(server.log)
        again = backend.generate(samples)
    cut, raw, down = first
    # a cut answer is a result; the echoed assistant prefix is removed
    assert (cut.text, cut.prompt_tokens, cut.error) == (" chat answer", 11, "")
    assert (raw.text, raw.error) == ("raw answer", "")
    assert down.text == "" and "5xx" in down.error and "ruler/down" in down.error  # reported, no crash
    sent = {json.dumps(body.get("messages") or body["prompt"]): (path, body) for path, body in sent_first}
    chat_path, chat_body = next(v for k, v in sent.items() if "CUT" in k)
    assert chat_path == "/v1/chat/completions"
    assert chat_body["messages"][-1] == {"role": "assistant", "content": "The key is"}
    assert (chat_body["temperature"], chat_body["seed"], chat_body["max_tokens"]) == (0.0, 0, 7)
    raw_path, raw_body = next(v for k, v in sent.items() if "2+2" in k)
    assert raw_path == "/v1/completions" and "messages" not in raw_body
    assert (raw_body["prompt"], raw_body["max_tokens"]) == ("Q: 2+2?\nA:", 3)
    assert len(sent_first) == 2 + 2  # the broken sample was retried once
    # the second pass re-sends only the request that never got an answer
    assert [(g.text, g.error) for g in again[:2]] == [(" chat answer", ""), ("raw answer", "")]
    assert [body["messages"][0]["content"] for _, body in server.log[4:]] == ["BROKEN"] * 2
    total = backend.accounting.total().to_dict()
    assert (total["calls"], total["cache_hits"], total["failures"]) == (6, 2, 2)
    assert backend.accounting.for_stage("ruler/down")["failures_by_reason"] == {"5xx": 2}


# What each server needs to continue a final assistant message, from its own source: vLLM's
# ChatCompletionRequest (continue_final_message, and add_generation_prompt must then be false),
# SGLang's (continue_final_message; it renders the generation prompt itself), llama.cpp's server
# (continues a final assistant message by default), and RULER's call_api.py for API models
# (input + answer_prefix in one user message).
EXPECTED = {
    "vllm": ([{"role": "user", "content": "Where is the key?"}, {"role": "assistant", "content": " The key is"}],
             {"continue_final_message": True, "add_generation_prompt": False}),
    "sglang": ([{"role": "user", "content": "Where is the key?"}, {"role": "assistant", "content": " The key is"}],
               {"continue_final_message": True}),
    "llamacpp": ([{"role": "user", "content": "Where is the key?"}, {"role": "assistant", "content": " The key is"}],
                 {}),
    "openai": ([{"role": "user", "content": "Where is the key? The key is"}], {}),
}
CONTINUATION_FIELDS = {"continue_final_message", "add_generation_prompt"}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_each_server_gets_the_request_that_continues_the_prefix(kind, tmp_path):
    samples = [sample("prefixed", "Where is the key?", 7, answer_prefix=" The key is"),
               sample("plain", "Where is the door?", 7)]
    with ScriptedServer(owner=kind if kind != "openai" else None) as server:
        assert detect_server(server.base_url) == kind  # what `server: auto` picks for this server
        backend = OpenAIBackend(server.base_url, "fake", context_window=4096, template_tokens=8,
                                cache_dir=tmp_path / "cache", server="auto")
        assert backend.server == kind and backend.describe()["server"] == kind
        answers = backend.generate(samples)
    sent = {body["messages"][0]["content"]: (path, body) for path, body in server.log}
    (_, plain), (path, prefixed) = sent.pop("Where is the door?"), sent.popitem()[1]
    messages, fields = EXPECTED[kind]
    assert path == "/v1/chat/completions" and prefixed["messages"] == messages
    assert {k: prefixed[k] for k in CONTINUATION_FIELDS & prefixed.keys()} == fields
    # without a prefix there is nothing to continue: a plain user turn, no continuation fields
    assert plain["messages"] == [{"role": "user", "content": "Where is the door?"}]
    assert not CONTINUATION_FIELDS & plain.keys()
    assert [a.text for a in answers] == [" chat answer"] * 2  # llama.cpp's echo of the prefix removed


def test_a_cached_answer_is_not_reused_for_another_way_of_asking(tmp_path):
    """The continuation fields change the answer, so they are part of the response-cache key."""
    s = sample("prefixed", "Where is the key?", 7, answer_prefix=" The key is")
    with ScriptedServer() as server:
        for kind in ("llamacpp", "vllm", "sglang", "vllm"):
            OpenAIBackend(server.base_url, "fake", context_window=4096, template_tokens=8,
                          cache_dir=tmp_path / "cache", server=kind).generate([s])
    assert len(server.log) == 3  # the second vLLM pass is answered from the cache


@pytest.mark.slow
def test_the_embedded_llama_cpp_server_continues_the_prefix(monkeypatch):
    """The reply must continue the assistant prefix, not start a new turn. Reference: the raw
    ``/completions`` answer for the server's own rendering of the user turn followed by the
    prefix (the prompt that ends inside the assistant turn); the prefix sent inside the user turn
    (``server: openai``) is the counter-example the check must tell apart."""
    pytest.importorskip("xllamacpp")
    from longctx.llm.server import EmbeddedServer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prefix = "1, 2, 3, 4, 5, 6,"
    s = Sample("ruler", "count", 0, 0, "Count from 1 to 20, separated by commas.", ["7"], 12, answer_prefix=prefix)

    def post(url: str, body: dict) -> dict:
        req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as resp:
            return json.loads(resp.read())

    with EmbeddedServer(n_ctx=1024) as server:
        root = server.base_url[:-len("/v1")]
        backend = OpenAIBackend(server.base_url, "SmolLM2-135M-Instruct", context_window=1024, template_tokens=8)
        assert backend.server == "llamacpp"  # detected from the server's own /v1/models and /props
        continued = backend.generate([s])[0]
        user_turn = post(root + "/apply-template", {"messages": [{"role": "user", "content": s.prompt}]})["prompt"]
        assert user_turn.endswith("assistant\n")  # the rendering stops where the assistant speaks
        reference = post(server.base_url + "/completions", {"model": "m", "prompt": user_turn + prefix,
                                                            "max_tokens": 12, "temperature": 0.0, "seed": 0})
        in_user_turn = OpenAIBackend(server.base_url, "SmolLM2-135M-Instruct", context_window=1024,
                                     template_tokens=8, server="openai").generate([s])[0]
    assert continued.error == "" and continued.text == reference["choices"][0]["text"]
    assert continued.text.lstrip().startswith("7")  # the count goes on after 6
    assert in_user_turn.text != continued.text  # a request that does not continue is told apart


def test_second_run_over_the_same_output_dir_is_answered_from_the_cache(tmp_path, monkeypatch):
    pytest.importorskip("xllamacpp")
    from longctx.llm.server import EmbeddedServer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with EmbeddedServer(n_ctx=2048, n_threads=os.cpu_count()) as server:   # every core: prompts are the cost
        cfg = from_mapping(EvalConfig, {
            "llm_base_url": server.base_url, "benchmarks": ["ruler", "mmlu"],  # mmlu: /completions
            "ruler_tasks": ["niah_single_1"], "ruler_lengths": [512], "n_samples": 1,
            "mmlu_dev_path": str(write_jsonl(tmp_path / "dev.jsonl", mmlu_rows("dev"))),
            "mmlu_test_path": str(write_jsonl(tmp_path / "test.jsonl", mmlu_rows("test"))),
            "mmlu_max_questions": 2, "mmlu_scoring": "generate", "max_new_tokens_cap": 4,
            "haystack_corpus": str(corpus_dir(tmp_path)), "output_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "samples")})
        runs = {}
        for run_id in ("first", "again"):  # a fresh backend each time, as a new process would open
            with open_backend(cfg) as backend:
                run_suite(cfg, backend, run_id)
            manifest = json.loads((tmp_path / "out" / run_id / "manifest.json").read_text())
            preds = [json.loads(line) for line in (tmp_path / "out" / run_id / "predictions.jsonl").open()]
            runs[run_id] = manifest["llm_total"], [(p["task"], p.get("index"), p.get("prediction")) for p in preds]
    (first, first_preds), (again, again_preds) = runs["first"], runs["again"]
    assert (first["calls"], first["cache_hits"], first["failures"]) == (3, 0, 0)  # 1 RULER + 2 MMLU
    assert first["requests"] == 3 and first["prompt_tokens"] > 0
    assert (again["calls"], again["cache_hits"], again["requests"]) == (3, 3, 0)
    assert again_preds == first_preds and all(p[2] is not None for p in first_preds)
    # the cache is named by the served GGUF's digest (llama.cpp's /props names the file)
    assert len(list((tmp_path / "out" / "cache").glob("*/responses.sqlite"))) == 1
