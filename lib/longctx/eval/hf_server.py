"""A small OpenAI-compatible server around a transformers checkpoint: vLLM's stand-in on CPU.

    python -m longctx.eval.hf_server runs/demo/03_train/1K/hf --port 8000 \\
        --served-model-name ours --max-model-len 4096

``slurm/evaluate.sbatch`` starts it instead of ``vllm serve`` when ``SERVER=transformers`` (a
rehearsal of the evaluation job on a CPU node, a tiny export in a test), with the same flags it
gives vLLM, so the job, the health wait and the evaluation client are the ones a GPU run uses.
It runs the real model (``AutoModelForCausalLM`` with the export's own RoPE, float64 frequencies as
in :class:`~longctx.eval.hf_backend.HFBackend`), one request at a time, greedy only.

Why not ``transformers serve``: it needs fastapi, uvicorn and openai (none is a dependency of the
project), its ``/v1/models`` does not report the window, and it has no ``continue_final_message``,
which the evaluation needs to continue RULER's answer prefix. This server speaks vLLM's dialect of
the API, the part the evaluation uses:

* ``GET /health``: 200 once the model is loaded;
* ``GET /v1/models``: the served name with ``max_model_len`` (the window the evaluation reads),
  ``root`` (the served folder) and ``longctx_fingerprint`` (the export's weights digest, which keys
  the evaluation's answer cache: :mod:`longctx.core.fingerprint`);
* ``POST /v1/chat/completions``: the checkpoint's chat template, with vLLM's
  ``add_generation_prompt`` and ``continue_final_message`` (a final assistant message continued);
* ``POST /v1/completions``: a raw prompt, BOS added as by vLLM.

``max_tokens`` bounds the answer; a prompt plus ``max_tokens`` beyond ``--max-model-len`` is a 400,
as in vLLM. ``temperature`` above 0 is refused: evaluation is greedy, and a stand-in that sampled
would give answers vLLM would not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = ["HFServer", "main"]

log = logging.getLogger("longctx.hf_server")


class HFServer:
    """The loaded model and the request handlers (one generation at a time, on a worker thread)."""

    def __init__(self, model_path: str, *, served_name: str = "", max_model_len: int = 0, dtype: str = "auto",
                 device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        from ..train.rope import install_rope
        from ..core.fingerprint import folder_fingerprint

        self.torch = torch
        self.model_path = model_path
        self.served_name = served_name or model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        kwargs = {} if dtype == "auto" else {"dtype": getattr(torch, dtype)}
        self.model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs).to(device).eval()
        install_rope(self.model)  # the checkpoint's own RoPE, float64 frequencies (HFBackend does the same)
        self.device = device
        window = int(self.model.config.max_position_embeddings)
        if max_model_len > window:
            raise ValueError(f"--max-model-len {max_model_len} exceeds the model's window {window} "
                             f"({model_path}/config.json max_position_embeddings)")
        self.max_model_len = max_model_len or window
        try:
            eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        except OSError:  # no generation_config.json
            eos = None
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos = [eos] if isinstance(eos, int) else list(eos or [])
        folder = Path(model_path)
        self.fingerprint = folder_fingerprint(folder) if folder.is_dir() else ""
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ generation
    def _generate(self, ids: list[int], max_tokens: int) -> tuple[list[int], str]:
        torch = self.torch
        with self.lock, torch.inference_mode():
            out = self.model.generate(torch.tensor([ids], device=self.device), do_sample=False,
                                      max_new_tokens=max_tokens, eos_token_id=self.eos or None,
                                      pad_token_id=self.eos[0] if self.eos else 0,
                                      attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device))
        new = out[0, len(ids):].tolist()
        if new and new[-1] in self.eos:
            return new[:-1], "stop"
        return new, "length" if len(new) >= max_tokens else "stop"

    def _check(self, body: dict[str, Any], n_prompt: int) -> int:
        if float(body.get("temperature") or 0.0) > 0.0:
            raise web.HTTPBadRequest(text=_error("this server decodes greedily only: temperature must be 0"),
                                     content_type="application/json")
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        if n_prompt + max_tokens > self.max_model_len:
            raise web.HTTPBadRequest(text=_error(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion)."),
                content_type="application/json")
        return max_tokens

    def _usage(self, n_prompt: int, n_new: int) -> dict[str, int]:
        return {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new}

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        messages = body.get("messages") or []
        cont = bool(body.get("continue_final_message", False))
        add_gen = bool(body.get("add_generation_prompt", not cont))
        if cont and add_gen:  # vLLM refuses the same
            raise web.HTTPBadRequest(text=_error("continue_final_message and add_generation_prompt cannot both "
                                                 "be true"), content_type="application/json")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_gen,
                                                  continue_final_message=cont)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes BOS
        max_tokens = self._check(body, len(ids))
        new, finish = await asyncio.to_thread(self._generate, ids, max_tokens)
        content = self.tokenizer.decode(new, skip_special_tokens=True)
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.served_name, "usage": self._usage(len(ids), len(new)),
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content}}]})

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise web.HTTPBadRequest(text=_error("prompt must be one string"), content_type="application/json")
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        max_tokens = self._check(body, len(ids))
        new, finish = await asyncio.to_thread(self._generate, ids, max_tokens)
        return web.json_response({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": self.served_name, "usage": self._usage(len(ids), len(new)),
            "choices": [{"index": 0, "finish_reason": finish,
                         "text": self.tokenizer.decode(new, skip_special_tokens=True)}]})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.served_name, "object": "model", "owned_by": "longctx-hf", "root": self.model_path,
            "max_model_len": self.max_model_len, "longctx_fingerprint": self.fingerprint}]})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)  # a 1M-token prompt is a few MB of JSON
        app.add_routes([web.get("/health", self.health), web.get("/v1/models", self.models),
                        web.post("/v1/chat/completions", self.chat), web.post("/v1/completions", self.completions)])
        return app


def _error(message: str) -> str:
    return json.dumps({"error": {"message": message, "type": "BadRequestError", "code": 400}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.eval.hf_server", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="checkpoint folder (an export's hf/) or hub name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default="", help="name the server answers to (default: the path)")
    parser.add_argument("--max-model-len", type=int, default=0, help="window (default: max_position_embeddings)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        server = HFServer(args.model, served_name=args.served_model_name, max_model_len=args.max_model_len,
                          dtype=args.dtype, device=args.device)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("serving %s as %r on http://%s:%d/v1 (window %d)", args.model, server.served_name, args.host,
             args.port, server.max_model_len)
    web.run_app(server.app(), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
