"""A real HTTP proxy in front of a real llama.cpp server, for pipeline-level tests.

It forwards ``POST /v1/chat/completions`` to the upstream server and logs every request body
(hash) and the content it relayed, so a test can count requests *at the server side*. Given a
fault schedule (by request number) it answers some requests itself instead: 429 with
Retry-After, 500, 503, a hang (headers and half a body, then silence: the client's
``stall_timeout_s`` catches it, and no slow normal answer can look like it), a dropped
connection, a body that is not JSON, or the upstream answer cut short with
``finish_reason: "length"``.

``content_fault_every = k`` makes the generator look weak: about one upstream answer in ``k``,
chosen by the hash of the request body (so every run, killed or not, gets the same ones), is
relayed cut at ``max_tokens`` or, for a structured request, as prose or as JSON off the schema.
``freeze_after = n``: after ``n`` relayed answers every further request is held unanswered until
the proxy closes, so a test can kill the client with nothing else completed.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "503", "hang", "drop", "bad_json", "length")
CONTENT_FAULTS = ("length", "notjson", "schema")


@dataclass
class Entry:
    body_hash: str
    fault: str | None
    content: str | None  # what the proxy relayed (None when it answered with a fault)
    finished: float
    delivered: bool = False  # an upstream completion was relayed, as is or with its content spoiled


@dataclass
class Proxy:
    upstream: str                                   # e.g. http://127.0.0.1:PORT/v1
    faults: dict[int, str] = field(default_factory=dict)  # request number (1-based) -> fault
    content_fault_every: int = 0                    # 0 = relay every upstream answer as it is
    freeze_after: int | None = None
    log: list[Entry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._count = 0
        self._relayed = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, b'{"status":"ok"}')

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy._lock:
                    proxy._count += 1
                    number = proxy._count
                fault = proxy.faults.get(number)
                digest = hashlib.sha256(body).hexdigest()
                if fault is None and proxy.content_fault_every and int(digest, 16) % proxy.content_fault_every == 0:
                    fault = CONTENT_FAULTS[int(digest, 16) // proxy.content_fault_every % 3]
                    if b'"response_format"' not in body:
                        fault = "length"  # prose is a valid answer to a free-text request
                with proxy._lock:
                    frozen = proxy.freeze_after is not None and proxy._relayed >= proxy.freeze_after
                    relay = not frozen and fault in (None, *CONTENT_FAULTS)
                    proxy._relayed += relay
                if frozen:
                    proxy._closing.wait()  # never answered: the client is killed meanwhile
                    self.close_connection = True
                    with proxy._lock:
                        proxy.log.append(Entry(digest, "frozen", None, time.time()))
                    return
                content = None
                if fault == "429":
                    self._send(429, b'{"error":"slow down"}', {"Retry-After": "1"})
                elif fault in ("500", "503"):
                    self._send(int(fault), b'{"error":"server error"}')
                elif fault == "hang":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [')
                    self.wfile.flush()
                    # logged now: the handler stays blocked until the proxy closes, after the test has read the log
                    with proxy._lock:
                        proxy.log.append(Entry(digest, fault, None, time.time(), delivered=False))
                    proxy._closing.wait()
                    self.close_connection = True
                    return
                elif fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                elif fault == "bad_json":
                    self._send(200, b'{"choices": [{"message": ')
                else:
                    request = urllib.request.Request(proxy.upstream.rstrip("/") + "/chat/completions", data=body,
                                                     headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(request, timeout=600) as response:
                        answer = json.loads(response.read())
                    message = answer["choices"][0]["message"]
                    if fault == "length":
                        message["content"] = message["content"][: len(message["content"]) // 2]
                        answer["choices"][0]["finish_reason"] = "length"
                    elif fault == "notjson":
                        message["content"] = "Sure! Here is a question about the passage."
                    elif fault == "schema":
                        message["content"] = "{}"
                    else:
                        content = answer["choices"][0]["message"]["content"]
                    self._send(200, json.dumps(answer).encode())
                with proxy._lock:
                    proxy.log.append(Entry(digest, fault, content, time.time(), delivered=relay))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "Proxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self.log)
