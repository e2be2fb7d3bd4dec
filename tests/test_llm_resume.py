"""A client process SIGKILLed part-way and restarted re-sends no request it had finished.

The worker (this file run as a script) makes N schema requests through a ResponseCache and
prints ``done <i> <sent|cached>`` after each call returns, i.e. after its answer was committed.
The test kills it twice at different points, restarts it, and checks against the fault server's
own request log that nothing reported done before a kill was ever sent again, and that the final
answers equal those of an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from fault_server import FaultServer

N_REQUESTS = 60
CONCURRENCY = 4
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}},
          "required": ["answer", "n"]}


def _worker(base_url: str, cache_dir: str, out_path: str) -> None:
    from longctx.llm import LLMClient, LLMConfig, ResponseCache

    async def run() -> dict[int, str]:
        config = LLMConfig(base_url=base_url, model="fault-model", max_concurrency=CONCURRENCY, timeout_s=10)
        with ResponseCache(cache_dir, "responses-0-of-1") as cache:
            async with LLMClient(config, cache=cache) as llm:
                async def one(i: int) -> str:
                    result = await llm.chat([{"role": "user", "content": f"request {i}"}], schema=SCHEMA,
                                            seed=i, temperature=0.5, max_tokens=32, stage="resume", doc_id=str(i))
                    print(f"done {i} {'cached' if result.cached else 'sent'}", flush=True)
                    return result.content
                contents = await asyncio.gather(*[one(i) for i in range(N_REQUESTS)])
        return dict(enumerate(contents))

    Path(out_path).write_text(json.dumps(asyncio.run(run())))


def _run(server: FaultServer, cache_dir: Path, out: Path, kill_after_sent: int | None) -> set[int]:
    """Run the worker; SIGKILL it once ``kill_after_sent`` new answers arrived. Returns the
    indices it reported done (all of them committed before the kill)."""
    proc = subprocess.Popen([sys.executable, __file__, server.base_url, str(cache_dir), str(out)],
                            stdout=subprocess.PIPE, text=True)
    done, sent = set(), 0
    for line in proc.stdout:
        _, index, how = line.split()
        done.add(int(index))
        sent += how == "sent"
        if kill_after_sent is not None and sent >= kill_after_sent:
            proc.send_signal(signal.SIGKILL)
            break
    rest = proc.stdout.read()  # lines written before the kill are still in the pipe
    done.update(int(line.split()[1]) for line in rest.splitlines())
    assert proc.wait(timeout=60) == (-signal.SIGKILL if kill_after_sent is not None else 0)
    return done


def _sent_indices(entries: list[dict]) -> list[int]:
    return [int(e["content"].split()[1]) for e in entries]


def test_sigkilled_run_resumes_without_resending_finished_requests(tmp_path):
    with FaultServer(delay_s=0.02) as server:
        cache_dir = tmp_path / "cache"
        finished_before: set[int] = set()
        for kill_after in (7, 15, None):
            log_start = len(server.log)
            done = _run(server, cache_dir, tmp_path / "resumed.json", kill_after)
            resent = set(_sent_indices(server.log[log_start:])) & finished_before
            assert not resent, f"requests {sorted(resent)} were finished before a kill but sent again"
            assert finished_before <= done  # everything finished earlier came back from the cache
            finished_before |= done
        resumed_sends = len(server.log)
        # Each kill loses only unfinished work: the requests in flight (<= CONCURRENCY) and the
        # answers waiting for the group commit under way (a few at this rate). A run that
        # started over would re-send dozens.
        assert N_REQUESTS <= resumed_sends <= N_REQUESTS + 2 * 3 * CONCURRENCY

        log_start = len(server.log)
        _run(server, tmp_path / "fresh-cache", tmp_path / "fresh.json", None)
        assert sorted(_sent_indices(server.log[log_start:])) == list(range(N_REQUESTS))

    resumed = json.loads((tmp_path / "resumed.json").read_text())
    fresh = json.loads((tmp_path / "fresh.json").read_text())
    assert resumed == fresh and len(fresh) == N_REQUESTS


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
