"""Stage 1 over an array: each shard's progress.json, the status command over a half-finished
and a finished run, the run-wide cost cap (stop, exit status, resume with a higher cap), and the
run-wide limits split over the tasks that run at once. Real HTTP servers on 127.0.0.1 throughout:
a scripted generator (tests/scripted_llm.py) and the logging proxy in front of the dry-run server."""

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
import yaml

from llm_proxy import Proxy
from longctx import generate
from longctx.core.config import ParamsError, from_mapping
from longctx.generate.params import GenerateParams
from longctx.generate.stage import RunStopped, describe_limits, task_limits
from longctx.generate.status import format_status, main as status_main, read_run
from longctx.llm.dry_run import DryRunServer
from scripted_llm import ScriptedServer, passage_words
from austen_books import write_openings

ROOT = Path(__file__).resolve().parents[1]


def answer(prompt: str, seed: int) -> dict:
    """Summaries and QA grounded in the prompt's own passage: every answer passes the gates."""
    words = passage_words(prompt)
    if '{"summary"' in prompt:
        return {"summary": "This part tells of " + " ".join(words[(seed >> k) % len(words)] for k in range(12))}
    a, b, c, d = [words[(seed >> (4 * k)) % len(words)] for k in range(4)]
    return {"question": f"Why does {a} come before {b} while {c} follows {d}?", "answer": f"{a.capitalize()} {b} {c} {d}."}


class CountingServer(ScriptedServer):
    """The scripted generator, holding each answer briefly and noting the most requests in flight."""

    def __init__(self):
        super().__init__(answer)
        self.in_flight = self.max_in_flight = 0

    async def _chat(self, request):
        self.in_flight += 1  # one event loop: no lock needed
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            return await super()._chat(request)
        finally:
            self.in_flight -= 1


@pytest.fixture
def corpus(tmp_path):
    return write_openings(tmp_path / "books", 4)


def params(corpus, out, base_url, **extra) -> GenerateParams:
    return from_mapping(GenerateParams, {
        "corpus": str(corpus), "output_dir": str(out), "small_chunk_tokens": 512, "medium_chunk_tokens": 1024,
        "max_documents": 4, "max_document_tokens": 1024, "n_hierarchical": 3, "n_global_questions": 1, "n_diverse": 3,
        "progress": False, "llm_base_url": base_url, "llm_model": "scripted",
        "price_input_per_mtok": 10.0, "price_output_per_mtok": 20.0, "progress_interval_s": 0.1,
        # one request at a time: the same requests in the same order in every run
        "max_concurrency": 1, "documents_in_flight": 1, **extra})


def progress_of(out: Path) -> dict:
    return json.loads((out / "progress.json").read_text())


def test_cost_cap_stops_the_run_cleanly_and_a_higher_cap_resumes_it(corpus, tmp_path, capsys):
    with CountingServer() as server:
        reference = generate.run(params(corpus, tmp_path / "ref", server.base_url))
        full_cost = reference["totals"]["cost_usd"]
        per_doc = [d["cost_usd"] for d in reference["per_document"]]
        assert len(per_doc) == 4 and full_cost > 0
        cap = per_doc[0] + per_doc[1] / 2  # reached in the middle of the second document
        out = tmp_path / "capped"
        with pytest.raises(RunStopped, match=r"reached max_cost_usd \$") as stopped:
            generate.run(params(corpus, out, server.base_url, max_cost_usd=cap))
        assert stopped.value.exit_code == 3
        state = progress_of(out)
        assert state["state"] == "stopped" and "max_cost_usd" in state["reason"]
        # it stopped at the cap: past it by at most the one request in flight, short of the next document
        assert cap <= state["spent"]["cost_usd"] < per_doc[0] + per_doc[1]
        assert state["documents"] == {**state["documents"], "done": 1, "this_run": 1, "total": 4}
        assert not (out / "manifest.json").exists()  # not finished
        assert len(list((out / "work" / "docs").glob("*.json"))) == 1

        # the command line: exit status 3 and a message naming the cap; nothing new is sent
        path = tmp_path / "capped.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in vars(params(corpus, out, server.base_url,
                                                                    max_cost_usd=cap)).items()}))
        sent = len(server.log)
        assert generate.main(["--params", str(path)]) == 3
        err = capsys.readouterr().err
        assert "stopped: the run's spend $" in err and "raise max_cost_usd" in err
        assert len(server.log) == sent

        # a higher cap resumes: nothing received is asked again, the output equals the reference
        resumed = generate.run(params(corpus, out, server.base_url, max_cost_usd=100.0))
        assert len(server.log) - sent + sent == len(server.log)
    this = resumed["this_invocation"]
    assert this["resumed_documents"] == 1 and this["llm_total"]["cache_hits"] > 0
    assert (out / "qa.jsonl").read_bytes() == (tmp_path / "ref" / "qa.jsonl").read_bytes()
    final = progress_of(out)
    assert final["state"] == "finished" and final["documents"]["done"] == 4
    # the spend carried over every invocation: exactly the reference's, nothing paid twice
    assert final["spent"]["cost_usd"] == pytest.approx(full_cost, rel=1e-6)
    assert final["spent"]["requests"] == reference["this_invocation"]["llm_total"]["requests"]


def test_the_cap_counts_every_shard_of_the_run(corpus, tmp_path):
    """A shard reads the others' progress files: with shard 0's spend over the cap, shard 1 sends nothing."""
    out = tmp_path / "run"
    with CountingServer() as server:
        first = generate.run(params(corpus, out, server.base_url, shard_index=0, shard_count=2))
        spent0 = first["totals"]["cost_usd"]
        sent = len(server.log)
        with pytest.raises(RunStopped, match=r"the others \$") as stopped:
            generate.run(params(corpus, out, server.base_url, shard_index=1, shard_count=2, max_cost_usd=spent0 / 2))
        assert len(server.log) == sent and stopped.value.exit_code == 3
    with pytest.raises(RuntimeError, match=r"00001-of-00002 has no manifest.json \(not finished; its progress.json "
                                           r"says stopped: the run's spend"):
        generate.merge(params(corpus, out, "http://unused/v1"))
    shard1 = progress_of(out / "shards" / "00001-of-00002")
    assert shard1["state"] == "stopped" and shard1["spent"]["requests"] == 0
    run = read_run(out)
    assert [s["shown_state"] for s in run["shards"]] == ["finished", "stopped"]
    assert run["totals"]["spent"]["cost_usd"] == pytest.approx(spent0)
    assert run["totals"]["documents_done"] == 2 and run["totals"]["documents_total"] == 4
    # the vLLM array script asks this before it starts a server: a finished shard needs none
    path = _yaml(corpus, out, "http://unused/v1", tmp_path)
    assert status_main(["--params", str(path), "--finished", "0/2"]) == 0
    assert status_main(["--params", str(path), "--finished", "1/2"]) == 1


def test_limits_are_for_the_whole_run_and_split_over_the_tasks_at_once(corpus, tmp_path):
    p = params(corpus, tmp_path / "x", "http://x/v1", max_concurrency=32, requests_per_minute=600,
               tokens_per_minute=2_000_000, limits_shared_by=8)
    assert task_limits(p, p.max_concurrency) == {"max_concurrency": 4, "requests_per_minute": 75.0,
                                                 "tokens_per_minute": 250_000.0}
    assert describe_limits(p, task_limits(p, 32)) == (
        "limits of this task (8 tasks at once share the run's): 4 requests in flight (of 32), 75 RPM (of 600), "
        "250,000 TPM (of 2,000,000)")
    with pytest.raises(ParamsError, match="limits_shared_by.*cannot share max_concurrency 4"):
        params(corpus, tmp_path / "x", "http://x/v1", max_concurrency=4, limits_shared_by=8)
    # a task started with its share keeps to it at the server
    with CountingServer() as server:
        manifest = generate.run(params(corpus, tmp_path / "share", server.base_url, max_concurrency=8,
                                       limits_shared_by=4, documents_in_flight=4))
    assert manifest["generator"]["limits_of_this_task"]["max_concurrency"] == 2
    assert manifest["counts"]["documents_written"] == 4 and 1 <= server.max_in_flight <= 2


def _yaml(corpus, out, base_url, tmp_path) -> Path:
    path = tmp_path / f"{out.name}.yaml"
    p = params(corpus, out, base_url)
    path.write_text(yaml.safe_dump({k: v for k, v in vars(p).items() if k not in ("shard_index", "shard_count")}))
    return path


def test_status_reads_a_killed_half_finished_shard_then_the_finished_run(corpus, tmp_path, capsys):
    """A task SIGKILLed half-way leaves a progress file the status command reads (and sees the
    task is gone); the resubmitted task finishes and carries the spend over."""
    out = tmp_path / "run"
    with DryRunServer() as upstream:
        with Proxy(upstream.base_url) as proxy:  # how many requests the shard's first document takes
            first = generate.run(params(corpus, tmp_path / "ref", proxy.base_url, shard_index=1, shard_count=2))
        freeze = first["per_document"][0]["requests"] + 2  # frozen early in the second document
        with Proxy(upstream.base_url, freeze_after=freeze) as proxy:
            path = _yaml(corpus, out, proxy.base_url, tmp_path)
            child = subprocess.Popen([sys.executable, "-m", "longctx.generate", "--params", str(path), "--shard", "1/2"],
                                     cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "lib")},
                                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            shard = out / "shards" / "00001-of-00002"
            deadline = time.monotonic() + 600  # reached only by a run that never writes its progress
            while time.monotonic() < deadline and child.poll() is None:
                state = progress_of(shard) if (shard / "progress.json").is_file() else {}
                if state.get("documents", {}).get("done", 0) >= 1 and state["spent"]["requests"] == freeze + 1:
                    break  # one document written, and the request frozen at the proxy counted
                time.sleep(0.05)
            assert child.poll() is None, child.stderr.read()[-2000:]
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        half = read_run(out)
        [entry] = half["shards"]
        assert entry["shard"] == "1/2" and entry["shown_state"] == "killed"  # same host, pid gone
        assert entry["documents"]["done"] == 1 and entry["documents"]["total"] == 2
        assert entry["spent"]["cost_usd"] > 0 and half["totals"]["shard_count"] == 2
        assert status_main(["--params", str(path)]) == 0
        table = capsys.readouterr().out.splitlines()
        [row] = [line.split() for line in table if line.startswith("1/2 ")]
        assert row[1] == "killed" and row[row.index("ago") + 1] == "1/2"  # documents done of the shard's
        assert "1 killed; 1 not started" in table[-1]

        with Proxy(upstream.base_url) as proxy:
            path = _yaml(corpus, out, proxy.base_url, tmp_path)
            assert generate.main(["--params", str(path), "--shard", "1/2"]) == 0
    capsys.readouterr()
    done = read_run(out)
    [entry] = done["shards"]
    manifest = json.loads((shard / "manifest.json").read_text())
    assert entry["shown_state"] == "finished" and entry["documents"]["done"] == 2 and entry["eta_s"] is None
    # the spend of both invocations: the killed one's as last written, plus this one's
    this = manifest["this_invocation"]["llm_total"]
    assert entry["spent"]["cost_usd"] == pytest.approx(half["shards"][0]["spent"]["cost_usd"] + this["cost_usd"])
    assert entry["spent"]["requests"] == half["shards"][0]["spent"]["requests"] + this["requests"]
    assert "finished" in format_status(done)


def test_an_array_task_logs_progress_lines_and_its_limits(corpus, tmp_path):
    """The API array script's own command, its output sent to a file as SLURM does: the log
    holds the task's share of the limits, plain progress lines with the spend, and the end."""
    out = tmp_path / "arr"
    with CountingServer() as server:
        path = _yaml(corpus, out, server.base_url, tmp_path)
        log = tmp_path / "longctx-generate-7_1.out"
        env = {**os.environ, "LONGCTX_PYTHON": sys.executable, "SLURM_SUBMIT_DIR": str(ROOT),
               "PYTHONPATH": str(ROOT / "lib"), "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "1",
               "SHARDS": "2", "TASKS_AT_ONCE": "1", "GENERATE_ARGS": "--set max_concurrency=2 --set progress=true"}
        with open(log, "w") as handle:
            done = subprocess.run(["bash", str(ROOT / "slurm" / "generate.sbatch"), str(path)], env=env,
                                  stdout=handle, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-2000:]
    assert "\r" not in text  # no bar redrawn in place: one line per report
    lines = text.splitlines()
    assert lines[0].startswith("longctx.generate shard 1/2 on ") and "job 7_1" in lines[0]
    assert lines[1] == ("[QA generation] shard 1/2: limits of this task: 2 requests in flight, no RPM limit, "
                        "no TPM limit")
    ticks = [line for line in lines if line.startswith("[QA generation] ") and "spent" in line]
    assert len(ticks) >= 2 and "finished in" in ticks[-1] and "2 documents done" in ticks[-1]
    assert any("ETA" in line for line in ticks[:-1])  # the timed lines, before the end
    assert progress_of(out / "shards" / "00001-of-00002")["slurm_job"] == "7_1"


def test_sigterm_stops_a_task_cleanly_and_the_resubmitted_task_loses_nothing(corpus, tmp_path):
    """Pre-emption, scancel and the time limit send SIGTERM first: the task sends nothing more,
    keeps what came in, says 'stopped' and exits 143; resubmitted, it asks nothing twice."""
    out = tmp_path / "term"
    with CountingServer() as server:
        path = _yaml(corpus, out, server.base_url, tmp_path)
        child = subprocess.Popen([sys.executable, "-m", "longctx.generate", "--params", str(path)], cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT / "lib")}, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and child.poll() is None:
            state = progress_of(out) if (out / "progress.json").is_file() else {}
            if state.get("documents", {}).get("done", 0) >= 1:
                break
            time.sleep(0.02)
        assert child.poll() is None, child.stderr.read()[-2000:]
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=600) == 143
        err = child.stderr.read()
        stopped = progress_of(out)
        assert stopped["state"] == "stopped" and stopped["reason"].startswith("SIGTERM")
        assert "stopped: SIGTERM" in err and "resubmit the task" in err
        # a request is its prompt and seed: a rejected QA is asked again with the same prompt, a new seed
        first = {(prompt, seed) for prompt, seed, _ in server.log}
        assert len(first) == len(server.log) == stopped["spent"]["requests"]  # every request sent was answered
        manifest = generate.run(params(corpus, out, server.base_url))
        again = [(prompt, seed) for prompt, seed, _ in server.log[len(first):]]
    assert not set(again) & first  # nothing answered before the signal was asked again
    assert manifest["counts"]["documents_written"] == 4
