"""Stage 1 end to end against the real embedded llama.cpp server, through a real proxy.

* the output honours the contract (docs/CONTRACTS.md) and the manifest adds up;
* a run SIGKILLed part-way and started again re-sends no request the server completed before
  the kill, rejected answers included (counted at the proxy, not from the cache), and ends with
  the same qa.jsonl as a run never killed;
* 429 / 5xx / hangs / dropped connections / broken bodies are survived, counted, and change
  nothing in the output (injected into the resumed run above: two llama.cpp runs in all, the
  reference and the killed-then-resumed one, instead of three);
* the API key never reaches an output file;
* notebook 01 runs it: the reference run IS the notebook executed headless by papermill with these
  params (what it records, the progress lines it streams), so the suite pays for two llama.cpp runs
  in all, not three.

Every run goes through a proxy that spoils about one answer in four (cut at max_tokens, prose,
off-schema; chosen by request hash, so the same in every run): a weak generator, as in the field.
Nothing here waits on a clock: the kill comes when the proxy has frozen and the run has recorded
every answer it got, the injected hang is a stall that no slow normal answer can resemble, and
the per-request timeout is an hour. A loaded machine makes these tests slower, never wrong.
"""

from __future__ import annotations

import contextlib
import io
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

from longctx.core.notebook import execute
from longctx.generate.params import GenerateParams
from longctx.llm.server import EmbeddedServer
from longctx.generate.quality import QuestionIndex, qa_problem

from llm_proxy import Proxy

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_generate_qa.ipynb"
SECRET = "sk-longctx-test-secret-0123456789abcdef"

CONTENT_FAULT_EVERY = 4
# A safety net for a hung run only (the project default is 600 s; a loaded machine needs more).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def server():
    # every core: the suite runs alone (one thread is the safe default on a shared machine)
    with EmbeddedServer(n_ctx=4096, n_parallel=1, n_threads=os.cpu_count()) as srv:
        yield srv


def tiny(output_dir: Path, base_url: str, **extra) -> dict:
    # Two chunks, one section, two questions of each kind: ~22 requests a run (the resumed run
    # needs 12 after the kill for its transport faults). A run of 768 tokens with four of each
    # sent twice as many requests and took 5 min of an idle 2-core machine, the suite's largest
    # cost; nothing checked here needs more than one section. Summaries may take 256 tokens:
    # with 160, SmolLM2's section summaries were cut at the limit and re-asked six times in a run
    # (28 requests, 126 s; 22 requests, 95 s with 256, same seed).
    return {
        "corpus": "austen", "max_documents": 1, "max_document_tokens": 512, "output_dir": str(output_dir),
        "small_chunk_tokens": 256, "medium_chunk_tokens": 512, "n_hierarchical": 2, "n_diverse": 2,
        "max_summary_tokens": 256, "max_qa_tokens": 160, "llm_base_url": base_url,
        "llm_api_key_env": "LONGCTX_TEST_KEY", "progress": False, "seed": 0,
        # no normal answer may time out however loaded the machine; the injected hang is a stall
        "request_timeout_s": 3600.0, "stall_timeout_s": 5.0,
        # one request at a time: the server has one slot, and queued requests would count their
        # waiting time against the timeout
        "max_concurrency": 1,
        # six injected transport faults and the proxy's spoiled answers may all land on one call
        # (a small run has few calls): enough attempts that none is given up on
        "max_http_attempts": 16,
        # notebook 01's own values of the keys its parameter cell sets and this dict would not, so
        # the notebook (the reference run) and the CLI runs send the same requests
        "multi_hop_max_chunks": 3, "max_qa_attempts": 2, "qa_budget": 1.6, "embedded_threads": 2,
        **extra,
    }


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory):
    """An uninterrupted run, as a user starts it from notebook 01 (papermill, the tiny params
    injected, its output streamed): its output, manifest, the proxy's log, what the notebook
    recorded and the lines it printed to stderr."""
    out = tmp_path_factory.mktemp("reference")
    os.environ["LONGCTX_TEST_KEY"] = SECRET    # the kernel inherits it
    streamed = io.StringIO()
    with Proxy(server.base_url, content_fault_every=CONTENT_FAULT_EVERY) as proxy, \
            contextlib.redirect_stderr(streamed):
        rec = execute(NOTEBOOK, tiny(out, proxy.base_url, progress=True), output=out / "01_generate_qa.ipynb",
                      timeout=3000, stream_output=True)
    manifest = json.loads((out / "manifest.json").read_text())
    return out, manifest, proxy.entries(), rec, streamed.getvalue().splitlines()


def test_notebook_01_records_and_streams_its_run(reference):
    """./dev demo streams the notebook's progress lines to the terminal as they are printed; what
    the notebook records describes the run's output."""
    out, manifest, _, rec, streamed = reference
    progress = [line for line in streamed if line.startswith("[QA generation]")]
    assert progress and progress[-1].startswith("[QA generation] 1 documents done,") and "finished in" in progress[-1]
    assert rec["documents"] == 1 and rec["qa_path"] == str(out / "qa.jsonl")
    # SmolLM2 may keep no diverse QA of two (the manifest counts them as shortfall)
    assert 0 < rec["hierarchical_per_document"][0] <= 2 and rec["diverse_per_document"][0] <= 2
    assert "global" in rec["levels"]
    assert rec["chunks_cover_document"] is True and rec["max_chunk_tokens"] <= 256
    assert rec["rejected_total"] == manifest["counts"]["rejected_total"]
    assert rec["rejected_by_gate"] == manifest["counts"]["rejected_by_gate"]


def test_output_follows_the_contract(reference):
    out, manifest, log, _, _ = reference
    records = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    assert len(records) == 1
    r = records[0]
    assert set(r) >= {"id", "source", "title", "text", "tokenizer", "n_tokens", "chunks", "sections",
                      "summaries", "hierarchical_qa", "diverse_qa"}
    assert r["id"] == "sensesensibility" and r["tokenizer"] == "llama3" and r["n_tokens"] <= 512
    assert r["chunks"][0]["token_start"] == 0 and r["chunks"][-1]["token_end"] == r["n_tokens"]
    assert len(r["summaries"]["chunks"]) == len(r["chunks"])
    assert len(r["summaries"]["sections"]) == len(r["sections"]) and r["summaries"]["global"]
    # counts never exceed the plan; everything kept passes the gates
    # SmolLM2 may keep no diverse QA of two (its answers fail the gates): what is missing is
    # counted as shortfall, never silently dropped
    assert 0 < len(r["hierarchical_qa"]) <= 2 and len(r["diverse_qa"]) <= 2
    seen = QuestionIndex()
    for qa in r["hierarchical_qa"] + r["diverse_qa"]:
        assert qa_problem(qa["question"], qa["answer"], seen) is None
        seen.add(qa["question"])
        assert all(0 <= c < len(r["chunks"]) for c in qa["chunk_ids"])
    hier = r["hierarchical_qa"]
    assert [q["index"] for q in hier] == list(range(len(hier)))
    assert [q["walk_step"] for q in hier] == sorted(q["walk_step"] for q in hier)
    order = {"global": 0, "section": 1, "chunk": 1}
    assert [order[q["level"]] for q in hier] == sorted(order[q["level"]] for q in hier)  # global first
    for q in r["diverse_qa"]:
        assert q["type"] in GenerateParams().diverse_types
    # the manifest adds up
    counts = manifest["counts"]
    assert counts["documents_written"] == 1 and counts["hierarchical_qa"] == len(hier)
    assert counts["hierarchical_qa"] + counts["shortfall_hierarchical"] == 2
    assert counts["diverse_qa"] + counts["shortfall_diverse"] == 2
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert counts["rejected_total"] == len(rejected) and all(x["reason"] for x in rejected)
    totals = manifest["totals"]
    assert totals["requests"] == len(log) and totals["prompt_tokens"] > 0 and totals["cache_hits"] == 0
    assert manifest["params"]["llm_api_key_env"] == "LONGCTX_TEST_KEY"


def test_api_key_never_written(reference):
    out = reference[0]          # the executed notebook is in it too
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


def test_the_demo_path_starts_the_embedded_server_itself(tmp_path):
    """``llm_base_url`` empty, as in the demo profile: the command starts the embedded llama.cpp
    server itself, with the params' threads, and sends no more requests at once than it has slots
    (one), whatever max_concurrency says. The smallest run that shows it: one 256-token chunk, one
    global question, one attempt (a few requests)."""
    out = tmp_path / "demo"
    params = tiny(out, "", max_document_tokens=256, n_hierarchical=1, n_global_questions=1, n_diverse=0,
                  max_qa_attempts=1, qa_budget=1.0, max_concurrency=32, embedded_threads=os.cpu_count(),
                  progress=True, llm_api_key_env="")          # the demo profile's: no key
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-m", "longctx.generate", "--params", str(tmp_path / "params.yaml")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "limits of this task: 1 requests in flight" in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generator"]["endpoint"] == "embedded llama.cpp server (SmolLM2-135M-Instruct)"
    assert manifest["generator"]["effective_concurrency"] == 1
    assert manifest["counts"]["documents_written"] == 1 and manifest["totals"]["requests"] > 0
    [record] = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    assert record["n_tokens"] <= 256 and len(record["chunks"]) == 1


def _recorded(cache_dir: Path) -> int:
    """Answers on disk in the run's cache: valid ones and recorded rejections."""
    total = 0
    for db in cache_dir.glob("*.sqlite") if cache_dir.is_dir() else ():
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            total += sum(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                         for t in ("responses", "deliveries") if t in tables)
    return total


def test_sigkill_then_faulty_resume_resends_nothing_and_changes_nothing(server, reference, tmp_path):
    """A run SIGKILLed part-way, then resumed through a proxy that also injects transport faults
    (429, 5xx, a hang, a dropped connection, a broken body): the resumed run re-sends nothing the
    server completed before the kill, survives and counts every fault, and ends with the same
    qa.jsonl and failures as the reference run, which saw neither. One resumed run proves both
    (it used to be two runs: the three llama.cpp runs of this file were half of the suite's time)."""
    ref_out, ref_manifest, ref_log, _, _ = reference
    # Kill right after a rejected answer (the runs send the same requests in the same order, one
    # at a time): its retry is the request in flight, and the rerun must replay the rejection.
    kill_after = next(i + 1 for i, e in enumerate(ref_log) if i >= 3 and e.fault in ("length", "notjson", "schema"))
    out = tmp_path / "killed"
    params_file = tmp_path / "params.yaml"
    env = {**os.environ, "LONGCTX_TEST_KEY": SECRET}
    with Proxy(server.base_url, content_fault_every=CONTENT_FAULT_EVERY, freeze_after=kill_after) as first:
        params_file.write_text(yaml.safe_dump(tiny(out, first.base_url)))
        child = subprocess.Popen([sys.executable, "-m", "longctx.generate", "--params", str(params_file)],
                                 cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 start_new_session=True)
        # The proxy answers kill_after requests, then holds the rest; once the run has recorded
        # all of them, the kill leaves nothing completed unrecorded. Only a run that drops
        # answers can stay below; the deadline turns that into a failure instead of a hang.
        deadline = time.monotonic() + 1800
        while _recorded(out / "cache") < kill_after and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.2)
        assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read()[-2000:]}"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        completed = {e.body_hash for e in first.entries() if e.delivered}
    assert not (out / "qa.jsonl").exists()
    assert len(completed) == kill_after
    faults = {2: "429", 3: "500", 5: "503", 7: "bad_json", 9: "drop", 11: "hang"}
    with Proxy(server.base_url, faults=faults, content_fault_every=CONTENT_FAULT_EVERY) as second:
        params_file.write_text(yaml.safe_dump(tiny(out, second.base_url)))
        # no wall-clock limit: the work is bounded below by what the proxy counts
        result = subprocess.run([sys.executable, "-m", "longctx.generate", "--params", str(params_file)],
                                cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        resent = {e.body_hash for e in second.entries()} & completed
        delivered_after = sum(e.delivered for e in second.entries())
        injected = [e.fault for e in second.entries() if e.fault and not e.delivered]
    assert not resent, f"{len(resent)} requests the server completed before the kill were sent again"
    # every completion paid for once: the two parts together delivered what the unkilled run did
    assert kill_after + delivered_after == sum(e.delivered for e in ref_log)
    assert (out / "qa.jsonl").read_bytes() == (ref_out / "qa.jsonl").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    # the notebook and the command line ran the same params (all of them, defaults included)
    differ = {"output_dir", "llm_base_url", "progress"}
    assert {k: v for k, v in manifest["params"].items() if k not in differ} == \
        {k: v for k, v in ref_manifest["params"].items() if k not in differ}
    this = manifest["this_invocation"]["llm_total"]
    assert this["requests"] == len(second.entries()) and this["replayed_failures"] >= 1
    # the transport faults: all injected, each retried and counted by its reason
    assert sorted(injected) == sorted(faults.values())
    retries = this["retries_by_reason"]
    assert retries.get("429") == 1 and retries.get("5xx") == 2 and retries.get("timeout") == 1
    assert retries.get("bad_response") == 1 and retries.get("connection") == 1
    # and they add no failure: every transport fault was retried to an answer, none given up on
    # (the weak generator's own give-ups, answers still cut at max_tokens, are content reasons)
    given_up = set(this["failures_by_reason"]) & {"429", "5xx", "timeout", "bad_response", "connection"}
    assert not given_up, this["failures_by_reason"]
