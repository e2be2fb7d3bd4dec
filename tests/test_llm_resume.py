"""A client process SIGKILLed part-way and restarted sends no request the server completed.

The worker (this file run as a script) makes N schema calls through a ResponseCache against the
fault server, whose scripts make many answers fail their content: cut at ``max_tokens``, not
JSON, off-schema, one call so often that it gives up. The server freezes after ``k`` delivered
completions (it holds every further request unanswered), the test waits until the worker has
recorded all ``k`` on disk, and SIGKILLs its process group: every completed request is then
"before the kill", every other one is in flight. No clock decides anything, so a slow machine
makes the test slower, never wrong.

What "sent again" means is counted at the server (its own log), not from the cache: a request
(messages + seed) that got a completion before a kill must never reach the server after it.
The answers after two kills equal those of a run never killed, and the server delivered
exactly as many completions in total as for that run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from fault_server import FaultServer

N_REQUESTS = 40
CONCURRENCY = 4
MAX_ATTEMPTS = 4
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}},
          "required": ["answer", "n"]}
# Request i plays SCRIPTS[i % len(SCRIPTS)]; the last one exhausts MAX_ATTEMPTS with content failures.
SCRIPTS = ("", "length", "notjson,length", "schema", "500,length,schema", "", "length,notjson,schema,length")


def _messages(i: int) -> list[dict]:
    script = SCRIPTS[i % len(SCRIPTS)]
    return [{"role": "user", "content": f"request {i}" + (f"\nfaults: {script}" if script else "")}]


def _worker(base_url: str, cache_dir: str, out_path: str) -> None:
    from longctx.llm import Accounting, LLMCallFailed, LLMClient, LLMConfig, ResponseCache

    accounting = Accounting()

    async def run() -> dict[int, str]:
        # The frozen requests never time out while the test waits: a slow machine cannot add sends.
        config = LLMConfig(base_url=base_url, model="fault-model", max_concurrency=CONCURRENCY, timeout_s=3600,
                           max_attempts=MAX_ATTEMPTS, backoff_base_s=0.01, backoff_max_s=0.05)
        with ResponseCache(cache_dir, "responses-0-of-1") as cache:
            async with LLMClient(config, cache=cache, accounting=accounting) as llm:
                async def one(i: int) -> str:
                    try:
                        result = await llm.chat(_messages(i), schema=SCHEMA, seed=100 * i, temperature=0.5,
                                                max_tokens=32, stage="resume", doc_id=str(i))
                    except LLMCallFailed as err:
                        return f"failed: {err.reason} after {err.attempts}"
                    return result.content
                contents = await asyncio.gather(*[one(i) for i in range(N_REQUESTS)])
        return dict(enumerate(contents))

    answers = asyncio.run(run())
    Path(out_path).write_text(json.dumps({"answers": answers, "accounting": accounting.total().to_dict()}))


def _recorded(cache_dir: Path) -> int:
    """Answers on disk in the worker's file: valid ones and recorded rejections."""
    path = cache_dir / "responses-0-of-1.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return sum(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                   for t in ("responses", "deliveries") if t in tables)


def _run(server: FaultServer, cache_dir: Path, out: Path, freeze_after: int | None) -> None:
    """Run the worker to the end, or (``freeze_after``) until the server has delivered that many
    completions in total and the worker has recorded them all; then SIGKILL its process group."""
    server.freeze_after = freeze_after
    before = sum(e["delivered"] for e in server.log)
    proc = subprocess.Popen([sys.executable, __file__, server.base_url, str(cache_dir), str(out)],
                            start_new_session=True)
    if freeze_after is None:
        assert proc.wait() == 0
        return
    # Only a client that loses answers can stall here; the deadline turns that into a failure.
    deadline = time.monotonic() + 300
    while _recorded(cache_dir) < freeze_after and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the worker ended before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sum(e["delivered"] for e in server.log) - before > 0


def _body(entry: dict) -> tuple[str, int]:
    return entry["content"], entry["seed"]


def test_sigkilled_run_resends_no_completed_request(tmp_path):
    cache_dir, out = tmp_path / "cache", tmp_path / "resumed.json"
    with FaultServer() as server:
        completed: set[tuple[str, int]] = set()
        for freeze_after in (15, 35, None):
            start = len(server.log)
            rejected_before = sum(e["delivered"] and e["fault"] != "ok" for e in server.log)
            _run(server, cache_dir, out, freeze_after)
            run_log = server.log[start:]
            resent = {_body(e) for e in run_log} & completed
            assert not resent, f"{len(resent)} requests the server had completed were sent again: {sorted(resent)[:3]}"
            completed |= {_body(e) for e in run_log if e["delivered"]}
        resumed_log, last_log = list(server.log), server.log[start:]
    last = json.loads(out.read_text())

    with FaultServer() as server:
        _run(server, tmp_path / "fresh-cache", tmp_path / "fresh.json", None)
        fresh_log = list(server.log)
    fresh = json.loads((tmp_path / "fresh.json").read_text())

    assert last["answers"] == fresh["answers"]
    failed = [a for a in fresh["answers"].values() if a.startswith("failed")]
    gives_up = sum(SCRIPTS[i % len(SCRIPTS)].count(",") + 1 >= MAX_ATTEMPTS for i in range(N_REQUESTS))
    assert failed == ["failed: length after 4"] * gives_up and gives_up > 0
    # Every completion was paid for once: as many deliveries as the run never killed.
    assert sum(e["delivered"] for e in resumed_log) == sum(e["delivered"] for e in fresh_log)
    # The last run's accounting: requests are what reached the server in that run, replayed
    # rejections are counted as such (not as requests or retries), and nothing else was lost.
    acc = last["accounting"]
    assert acc["calls"] == N_REQUESTS
    assert acc["requests"] == len(last_log) and acc["failures"] == len(failed)
    assert 0 < acc["replayed_failures"] <= rejected_before
    # a call not answered from the cache or the record is one that sent in the last run
    sending = {e["content"].split("\n")[0] for e in last_log}
    assert 0 < acc["cache_hits"] == N_REQUESTS - len(sending)


def test_recorded_rejections_replay_a_give_up_and_continue_where_they_end(tmp_path):
    """In one process: a call that gave up is given up again from the record (nothing sent);
    with more attempts allowed it goes on at the seed where the record ends."""
    from longctx.llm import Accounting, LLMCallFailed, LLMClient, LLMConfig, ResponseCache

    msgs = [{"role": "user", "content": "request x\nfaults: length,schema,length"}]

    def call(server: FaultServer, attempts: int, accounting: Accounting):
        async def run():
            config = LLMConfig(base_url=server.base_url, model="fault-model", max_attempts=attempts,
                               backoff_base_s=0.01, backoff_max_s=0.02)
            with ResponseCache(tmp_path) as cache:
                async with LLMClient(config, cache=cache, accounting=accounting) as llm:
                    return await llm.chat(msgs, schema=SCHEMA, seed=10, max_tokens=8, stage="s", doc_id="x")
        return asyncio.run(run())

    with FaultServer() as server:
        first, again, resumed = Accounting(), Accounting(), Accounting()
        for accounting in (first, again):
            try:
                call(server, 2, accounting)
            except LLMCallFailed as err:
                assert (err.reason, err.attempts) == ("schema", 2)
            else:
                raise AssertionError("the call should have given up")
        assert [e["seed"] for e in server.log] == [10, 11]  # the second give-up sent nothing
        assert again.total().to_dict()["replayed_by_reason"] == {"length": 1, "schema": 1}
        assert (again.total().cache_hits, again.total().requests, again.total().failures["schema"]) == (1, 0, 1)
        result = call(server, 4, resumed)
        assert [e["seed"] for e in server.log] == [10, 11, 12, 13]  # goes on at seed + 2
    assert result.attempts == 4 and not result.cached
    total = resumed.total()
    assert (total.requests, total.cache_hits, dict(total.retries), sum(total.replayed.values())) == (2, 0, {"length": 1}, 2)


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
