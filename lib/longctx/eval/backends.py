"""Two ways to run a model behind one interface: a local Hugging Face model, or any
OpenAI-compatible server (vLLM, llama.cpp, SGLang, hosted APIs).

Both answer :class:`Backend`: a name, the context window, the tokenizer used to size prompts,
the number of tokens the chat template adds around one user turn (so the budget can reserve
them), ``generate`` for a list of samples, and ``choice_logprobs`` for multiple-choice samples
(MMLU's log-likelihood scoring, as lm-evaluation-harness does it): the log-probability of each
choice (`` A`` .. `` D``) as the next token after the prompt. The HF backend reads it from the
model's logits; a server backend asks ``/completions`` for the top-``k`` log-probabilities of one
generated token (vLLM and OpenAI answer ``logprobs.top_logprobs``, llama.cpp ``logprobs.content``).
A choice outside the top ``k`` gets ``-inf``; the arg-max is exact whenever any choice is inside.

* :class:`~longctx.eval.hf_backend.HFBackend` (its own module) loads a checkpoint with ``transformers``. Its RoPE settings are the ones in
  the checkpoint's ``config.json`` (stage 3 writes them there), computed in float64 by
  :func:`longctx.train.rope.install_rope`; ``rope`` overrides them (the zero-shot baseline: Llama-3.1-
  8B-Instruct with the 1M stage's RoPE and no training). Chat template from the tokenizer.
* :class:`OpenAIBackend` asks ``/chat/completions`` (``/completions`` for samples sent
  without a chat template) through the project's :class:`~longctx.llm.LLMClient`: retries,
  bounded concurrency, accounting, and a response cache that makes a repeated run free. The
  server applies the template. With ``tokenizer: server`` prompts are sized with the server's
  own ``/tokenize`` (llama.cpp), and the template cost is measured with ``/apply-template``.

The answer prefix (RULER's ``answer_prefix``, InfiniteBench's "The pass key is") must be
*continued* by the model. RULER writes it after the rendered chat template as raw text, leading
space included (``prepare.py``: ``template + answer_prefix``); a server renders it as a final
assistant message through the model's own template, and Llama-3's trims it (``| trim``), so
the model sees ``...<|end_header_id|>\n\nThe special magic ...``. The HF backend renders it
the same way (``continue_final_message``), so a local and a served model get the same tokens and
the scorer compares the same continuation (the prefix is never part of the prediction). Each
server needs its own request for that (``server``):

* ``vllm``: a final assistant message with ``continue_final_message: true`` and
  ``add_generation_prompt: false`` (vLLM refuses both true; without them it closes the message
  as a finished turn). The reply is the continuation.
* ``sglang``: a final assistant message with ``continue_final_message: true``. The reply is the
  continuation.
* ``llamacpp``: a bare final assistant message (llama.cpp's server continues it unless started
  with ``--no-prefill-assistant``). Its reply repeats the prefix, which is removed.
* ``openai``: the prefix at the end of the user message, as RULER's ``call_api.py`` does for API
  models (a hosted API continues nothing).

``auto`` asks the server which it is: ``/v1/models`` names the owner (``vllm``, ``sglang``,
``llamacpp``), and llama.cpp also answers ``/props``; anything else is ``openai``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ..core.tokenizer import Tokenizer, load_tokenizer
from ..llm import Accounting, LLMCallFailed, LLMClient, LLMConfig, LLMSetupError, ResponseCache
from ..llm.sync import run_sync
from .sample import Sample

__all__ = ["Backend", "Generation", "OpenAIBackend", "ServerTokenizer", "SERVERS", "detect_server"]

_PROBE = "Hello"  # user text used to measure what the chat template adds
SERVERS = ("auto", "vllm", "sglang", "llamacpp", "openai")
# request fields that make each server continue a final assistant message (module docstring)
_CONTINUE: dict[str, dict[str, Any]] = {
    "vllm": {"continue_final_message": True, "add_generation_prompt": False},
    "sglang": {"continue_final_message": True},
    "llamacpp": {},
}


@dataclass
class Generation:
    text: str
    prompt_tokens: int = 0      # as counted by the backend (server usage / input ids)
    error: str = ""             # non-empty: the request failed; the sample scores 0 and says why


class Backend(Protocol):
    name: str
    context_window: int
    tokenizer: Tokenizer

    def template_tokens(self) -> int:
        """Tokens the chat template adds around one user turn plus the assistant header."""

    def generate(self, samples: Sequence[Sample]) -> list[Generation]:
        """Greedy answers, one per sample, each at most ``sample.max_new_tokens`` tokens."""

    def choice_logprobs(self, samples: Sequence[Sample]) -> list[list[float] | str]:
        """Per sample, the next-token log-probabilities of `` `` + each of ``sample.choices``, or
        the reason they could not be had (a failed request)."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the model (path, RoPE, window)."""


# --------------------------------------------------------------------------- HTTP helpers


def _post(url: str, body: dict[str, Any], timeout: float, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _get(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _server_root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[:-3] if root.endswith("/v1") else root


class ServerTokenizer:
    """The :class:`~longctx.core.tokenizer.Tokenizer` interface over llama.cpp's ``/tokenize`` and
    ``/detokenize`` (the served model's own vocabulary, no local files needed)."""

    def __init__(self, base_url: str, timeout: float = 120.0, model: str = ""):
        self.root = _server_root(base_url)
        # named after the served model, not the URL: caches keyed by it survive a new port
        self.name = "server:" + (model or self.root)
        self.timeout = timeout
        self.vocab_size = 0

    def _pieces(self, text: str) -> list[dict[str, Any]]:
        out = _post(self.root + "/tokenize", {"content": text, "add_special": False, "with_pieces": True},
                    self.timeout)
        return out["tokens"]

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        out = _post(self.root + "/tokenize", {"content": text, "add_special": False}, self.timeout)
        return [t if isinstance(t, int) else t["id"] for t in out["tokens"]]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(self.encode(t), dtype=np.int32) for t in texts]

    def encode_with_offsets(self, text: str) -> tuple[list[int], np.ndarray]:
        pieces = self._pieces(text) if text else []
        lengths = [len(p["piece"].encode("utf-8")) if isinstance(p["piece"], str) else len(p["piece"])
                   for p in pieces]
        byte_starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64) if pieces else np.zeros(0, np.int64)
        raw = text.encode("utf-8")
        char_of_byte = np.cumsum((np.frombuffer(raw, dtype=np.uint8) & 0xC0) != 0x80) - 1
        return [p["id"] for p in pieces], char_of_byte[np.minimum(byte_starts, len(raw) - 1)] if pieces else byte_starts

    def decode(self, ids: Sequence[int]) -> str:
        return _post(self.root + "/detokenize", {"tokens": list(ids)}, self.timeout)["content"] if ids else ""

    def special_id(self, token: str) -> int:
        ids = self.encode(token)
        if len(ids) != 1:
            raise KeyError(f"{token!r} is not a special token of {self.name}")
        return ids[0]


def detect_server(base_url: str, timeout: float = 30.0) -> str:
    """Which server answers at ``base_url``: the owner its ``/models`` names (vLLM, SGLang and
    llama.cpp each write their own name there), else llama.cpp if ``/props`` answers, else
    ``openai`` (a server of unknown kind: the prefix goes into the user message)."""
    try:
        owners = {m.get("owned_by") for m in _get(base_url.rstrip("/") + "/models", timeout).get("data", [])}
        for name in ("vllm", "sglang", "llamacpp"):
            if name in owners:
                return name
        if "longctx-hf" in owners:  # longctx.eval.hf_server speaks vLLM's dialect (continue_final_message)
            return "vllm"
    except (urllib.error.URLError, ValueError, TypeError, AttributeError, OSError):
        pass
    try:
        if "default_generation_settings" in _get(_server_root(base_url) + "/props", timeout):
            return "llamacpp"
    except (urllib.error.URLError, ValueError, TypeError, OSError):
        pass
    return "openai"


def _top_logprobs(logprobs: dict[str, Any]) -> dict[str, float]:
    """token text -> log-probability of the first generated token's top-k, from either answer
    shape: OpenAI / vLLM ``top_logprobs: [{token: logprob}]``, llama.cpp ``content: [{top_logprobs:
    [{token, logprob}]}]``."""
    if logprobs.get("content"):
        return {t["token"]: float(t["logprob"]) for t in logprobs["content"][0]["top_logprobs"]}
    return {token: float(lp) for token, lp in logprobs["top_logprobs"][0].items()}


# --------------------------------------------------------------------------- OpenAI-compatible


class OpenAIBackend:
    """A model behind an OpenAI-compatible server, asked through :class:`~longctx.llm.LLMClient`.

    Every generation is one client call (retries with backoff, bounded concurrency), tagged
    ``stage = "benchmark/task"`` and ``doc_id = "benchmark/task/length/index"`` in
    :attr:`accounting`. With ``cache_dir`` the answers are kept in a
    :class:`~longctx.llm.ResponseCache` there, so an interrupted or repeated evaluation re-sends
    no finished request. Within the folder the key is the model name sent and the exact request;
    the folder itself is named by the served weights' fingerprint (:func:`~longctx.eval.runner.answer_cache`),
    so a different checkpoint served under the same name has other answers. ``server`` says how the
    answer prefix is continued (the module's table; ``auto`` asks the server).
    """

    def __init__(self, base_url: str, model: str, *, tokenizer: str = "server", api_key_env: str = "",
                 context_window: int = 0, template_tokens: int = -1, max_concurrency: int = 4,
                 timeout_s: float = 600.0, name: str = "", cache_dir: str | Path | None = None,
                 server: str = "auto", top_logprobs: int = 20, cache_writer: str = "responses"):
        if server not in SERVERS:
            raise ValueError(f"server {server!r} is not one of {list(SERVERS)}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = name or model
        self.server = detect_server(self.base_url) if server == "auto" else server
        # retries and backoff keep LLMConfig's defaults; tune them on this object if needed
        self.llm_config = LLMConfig(base_url=self.base_url, model=model, api_key_env=api_key_env,
                                    max_concurrency=max_concurrency, timeout_s=timeout_s)
        if api_key_env and not os.environ.get(api_key_env):  # fail here, not at the first generate()
            raise LLMSetupError(f"environment variable {api_key_env} is empty or unset")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.top_logprobs = top_logprobs  # k of the top-k log-probabilities (vLLM allows 20 by default)
        self.logprob_requests = 0  # choice_logprobs requests sent (cache hits excluded)
        self.cache_writer = cache_writer  # this process's file in cache_dir (one per shard)
        self.model_fingerprint = ""  # digest of the served weights, set by runner.open_backend
        self.embedded_threads = 0  # set by runner.open_backend when it started the embedded server
        self.accounting = Accounting()  # every call of this backend; the runner's manifest records it
        self.tokenizer = (ServerTokenizer(self.base_url, timeout_s, model) if tokenizer == "server"
                          else load_tokenizer(tokenizer))
        self.context_window = context_window or self._ask_window()
        self._template_tokens = template_tokens

    def _ask_window(self) -> int:
        root = _server_root(self.base_url)
        try:  # llama.cpp
            props = _get(root + "/props", 30)
            return int(props["default_generation_settings"]["n_ctx"])
        except (urllib.error.URLError, KeyError, ValueError, TypeError, OSError):
            pass
        try:  # vLLM lists max_model_len with the model
            for m in _get(self.base_url + "/models", 30).get("data", []):
                if m.get("max_model_len"):
                    return int(m["max_model_len"])
        except (urllib.error.URLError, KeyError, ValueError, TypeError, OSError):
            pass
        raise RuntimeError(f"{self.base_url}: cannot read the model's context window; set context_window")

    def template_tokens(self) -> int:
        if self._template_tokens < 0:
            try:  # llama.cpp renders the template for us
                rendered = _post(_server_root(self.base_url) + "/apply-template",
                                 {"messages": [{"role": "user", "content": _PROBE}]}, 30)["prompt"]
                self._template_tokens = len(self.tokenizer.encode(rendered)) - len(self.tokenizer.encode(_PROBE))
                # the server adds BOS on its own when the template does not write it
                self._template_tokens += 1
            except (urllib.error.URLError, KeyError, OSError):
                self._template_tokens = 64  # unknown template: a conservative reserve
        return self._template_tokens

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "base_url": self.base_url, "model": self.model, "server": self.server,
                "context_window": self.context_window, "tokenizer": self.tokenizer.name,
                "template_tokens": self.template_tokens(),
                "response_cache": str(self.cache_dir) if self.cache_dir else "",
                "model_fingerprint": self.model_fingerprint,
                **({"embedded_threads": self.embedded_threads} if self.embedded_threads else {})}

    def choice_logprobs(self, samples: Sequence[Sample]) -> list[list[float] | str]:
        """Answers already in ``{cache_dir}/choice_logprobs.jsonl`` (keyed like the response cache:
        model name + request) are not asked again; each new answer is appended as it arrives, so
        a killed run resumes where it stopped."""
        from concurrent.futures import ThreadPoolExecutor

        path = self.cache_dir / "choice_logprobs.jsonl" if self.cache_dir else None
        known: dict[str, list[float]] = {}
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError, KeyError):  # a line cut by a kill is skipped
                    record = json.loads(line)
                    known[record["key"]] = record["logprobs"]
        keys = [self._logprob_key(s) for s in samples]
        todo = [(k, s) for k, s in zip(keys, samples) if k not in known]
        if todo:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            with ThreadPoolExecutor(self.llm_config.max_concurrency) as pool, \
                    (path.open("a", encoding="utf-8") if path is not None else contextlib.nullcontext()) as handle:
                for (key, _), answer in zip(todo, pool.map(lambda ks: self._choice_logprobs_one(ks[1]), todo)):
                    self.logprob_requests += 1
                    if isinstance(answer, list):
                        known[key] = answer
                        if handle is not None:
                            handle.write(json.dumps({"key": key, "logprobs": answer}) + "\n")
                            handle.flush()
                    else:
                        known[key] = answer  # a failure is reported, not cached
        return [known[k] for k in keys]

    def _logprob_key(self, sample: Sample) -> str:
        import hashlib

        request = json.dumps([self.model, sample.prompt, sample.choices, self.top_logprobs], ensure_ascii=False)
        return hashlib.sha256(request.encode("utf-8")).hexdigest()

    def _choice_logprobs_one(self, sample: Sample) -> list[float] | str:
        body = {"model": self.model, "prompt": sample.prompt, "max_tokens": 1, "temperature": 0.0,
                "logprobs": self.top_logprobs}
        headers = ({"Authorization": f"Bearer {os.environ[self.llm_config.api_key_env]}"}
                   if self.llm_config.api_key_env else None)
        try:
            out = _post(self.base_url + "/completions", body, self.llm_config.timeout_s, headers)
            top = _top_logprobs(out["choices"][0]["logprobs"])
        except (urllib.error.URLError, OSError, KeyError, IndexError, TypeError, ValueError) as err:
            return f"{type(err).__name__}: {str(err)[:200]}"
        return [top.get(" " + choice, float("-inf")) for choice in sample.choices]

    def generate(self, samples: Sequence[Sample]) -> list[Generation]:
        return run_sync(self._generate_all(list(samples)))  # also from a Jupyter kernel's loop

    async def _generate_all(self, samples: list[Sample]) -> list[Generation]:
        with contextlib.ExitStack() as stack:
            cache = stack.enter_context(ResponseCache(self.cache_dir, self.cache_writer)) if self.cache_dir else None
            async with LLMClient(self.llm_config, cache=cache, accounting=self.accounting) as llm:
                return list(await asyncio.gather(*(self._generate_one(llm, s) for s in samples)))

    async def _generate_one(self, llm: LLMClient, sample: Sample) -> Generation:
        continued = sample.chat and bool(sample.answer_prefix) and self.server != "openai"
        extra = None
        if continued:  # a final assistant message the server continues (module docstring)
            messages = [{"role": "user", "content": sample.prompt},
                        {"role": "assistant", "content": sample.answer_prefix}]
            extra = _CONTINUE[self.server] or None
        else:  # /completions takes it as is; a server that continues nothing sees the prefix asked
            messages = [{"role": "user", "content": sample.prompt + sample.answer_prefix}]
        stage = f"{sample.benchmark}/{sample.task}"
        try:
            # greedy; reaching the budget is a normal end of an evaluation answer
            result = await llm.chat(messages, temperature=0.0, seed=0, max_tokens=sample.max_new_tokens,
                                    accept_length=True, completion=not sample.chat, stage=stage,
                                    doc_id=f"{stage}/{sample.context_length}/{sample.index}", extra_body=extra)
        except LLMCallFailed as err:
            return Generation("", error=str(err))
        text, prefix = result.content, sample.answer_prefix.strip()
        if continued and self.server == "llamacpp" and text.lstrip().startswith(prefix):
            # llama.cpp's reply repeats the continued message; keep the new text
            text = text.lstrip()[len(prefix):]
        return Generation(text, result.prompt_tokens)
