"""A real HTTP proxy in front of a real llama.cpp server, for pipeline-level tests.

It forwards ``POST /v1/chat/completions`` to the upstream server and logs every request body
(hash) and the content it relayed, so a test can count requests *at the server side*. Given a
fault schedule it answers some requests itself instead: 429 with Retry-After, 500, 503, a hang
past the client's timeout, a dropped connection, a body that is not JSON, or the upstream answer
cut short with ``finish_reason: "length"``.
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


@dataclass
class Entry:
    body_hash: str
    fault: str | None
    content: str | None  # what the proxy relayed (None when it answered with a fault)
    finished: float


@dataclass
class Proxy:
    upstream: str                                   # e.g. http://127.0.0.1:PORT/v1
    faults: dict[int, str] = field(default_factory=dict)  # request number (1-based) -> fault
    hang_s: float = 6.0
    log: list[Entry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
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
                content = None
                if fault == "429":
                    self._send(429, b'{"error":"slow down"}', {"Retry-After": "1"})
                elif fault in ("500", "503"):
                    self._send(int(fault), b'{"error":"server error"}')
                elif fault == "hang":
                    time.sleep(proxy.hang_s)
                    self.close_connection = True
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
                    if fault == "length":
                        message = answer["choices"][0]["message"]
                        message["content"] = message["content"][: len(message["content"]) // 2]
                        answer["choices"][0]["finish_reason"] = "length"
                    else:
                        content = answer["choices"][0]["message"]["content"]
                    self._send(200, json.dumps(answer).encode())
                with proxy._lock:
                    proxy.log.append(Entry(digest, fault, content, time.time()))

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
        self._server.shutdown()
        self._server.server_close()

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self.log)
