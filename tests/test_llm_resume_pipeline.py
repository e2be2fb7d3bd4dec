"""Stage 1 SIGKILLed right after a rejected answer and resumed pays for no completion twice.

The fast twin of the slow llama.cpp test in test_generate_e2e.py: the real pipeline
(``python -m longctx.generate`` in a child process) behind the logging proxy (tests/llm_proxy.py),
whose upstream is the project's instant DryRunServer, so it runs in seconds. The proxy spoils
one answer in three (cut, prose, off-schema; chosen by request hash, the same in every run): a
weak generator. The kill comes when the proxy has frozen and the run has recorded every answer
it got, right after a rejected one, so the request in flight is that rejection's retry.
"Sent again" is counted at the proxy. Nothing waits on a clock.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llm_proxy import CONTENT_FAULTS, Proxy
from longctx.llm.dry_run import DryRunServer
from austen_books import write_openings

ROOT = Path(__file__).resolve().parents[1]
EVERY = 3


@pytest.fixture(scope="module")
def upstream():
    with DryRunServer() as server:
        yield server


def _params(tmp_path: Path, out: Path, base_url: str) -> Path:
    folder = tmp_path / "books"
    if not folder.is_dir():
        write_openings(folder, 1)  # one book: the kill (request ~10 of 20) lands in it either way
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({
        "corpus": str(folder), "output_dir": str(out), "small_chunk_tokens": 512, "medium_chunk_tokens": 1024,
        "max_document_tokens": 2048, "n_hierarchical": 4, "n_diverse": 4, "progress": False,
        "llm_base_url": base_url, "request_timeout_s": 3600.0,
        # one request at a time: the same requests in the same order in every run
        "max_concurrency": 1, "documents_in_flight": 1}))
    return path


def _generate(params: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "longctx.generate", "--params", str(params)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "lib")}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def _recorded(cache_dir: Path) -> int:
    total = 0
    for db in cache_dir.glob("*.sqlite") if cache_dir.is_dir() else ():
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            total += sum(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("responses", "deliveries"))
    return total


def test_killed_after_a_rejection_and_resumed_resends_nothing_completed(upstream, tmp_path):
    with Proxy(upstream.base_url, content_fault_every=EVERY) as proxy:
        ref = _generate(_params(tmp_path, tmp_path / "ref", proxy.base_url))
        assert ref.wait() == 0, ref.stderr.read()[-2000:]
        ref_log = proxy.entries()
    kill_after = next(i + 1 for i, e in enumerate(ref_log) if i >= 5 and e.fault in CONTENT_FAULTS)

    out = tmp_path / "killed"
    with Proxy(upstream.base_url, content_fault_every=EVERY, freeze_after=kill_after) as first:
        child = _generate(_params(tmp_path, out, first.base_url))
        deadline = time.monotonic() + 600  # reached only by a run that loses answers
        while _recorded(out / "cache") < kill_after and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read()[-2000:]
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        completed = {e.body_hash for e in first.entries() if e.delivered}
    assert len(completed) == kill_after and not (out / "qa.jsonl").exists()

    with Proxy(upstream.base_url, content_fault_every=EVERY) as second:
        rerun = _generate(_params(tmp_path, out, second.base_url))
        assert rerun.wait() == 0, rerun.stderr.read()[-2000:]
        after = second.entries()
    resent = {e.body_hash for e in after} & completed
    assert not resent, f"{len(resent)} requests the server completed before the kill were sent again"
    assert kill_after + sum(e.delivered for e in after) == sum(e.delivered for e in ref_log)
    assert (out / "qa.jsonl").read_bytes() == (tmp_path / "ref" / "qa.jsonl").read_bytes()
    this = json.loads((out / "manifest.json").read_text())["this_invocation"]["llm_total"]
    assert this["requests"] == len(after) and this["replayed_failures"] >= 1
    assert this["requests"] + this["cache_hits"] >= this["calls"]
