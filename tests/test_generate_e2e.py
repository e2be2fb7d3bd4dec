"""Stage 1 end to end against the real embedded llama.cpp server, through a real proxy.

* the output honours the contract (docs/CONTRACTS.md) and the manifest adds up;
* a run SIGKILLed part-way and started again re-sends no request completed before the kill
  (counted at the proxy) and ends with the same qa.jsonl as a run never killed;
* 429 / 5xx / hangs / dropped connections / broken bodies are survived, counted, and change
  nothing in the output;
* the API key never reaches an output file.
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

from longctx import generate
from longctx.config import from_mapping
from longctx.generate_params import GenerateParams
from longctx.llm.server import EmbeddedServer
from longctx.quality import QuestionIndex, qa_problem

from llm_proxy import Proxy

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-longctx-test-secret-0123456789abcdef"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    # every core: the suite runs alone (one thread is the safe default on a shared machine)
    with EmbeddedServer(n_ctx=4096, n_parallel=1, n_threads=os.cpu_count()) as srv:
        yield srv


def tiny(output_dir: Path, base_url: str, **extra) -> dict:
    return {
        "corpus": "austen", "max_documents": 1, "max_document_tokens": 768, "output_dir": str(output_dir),
        "small_chunk_tokens": 256, "medium_chunk_tokens": 768, "n_hierarchical": 4, "n_diverse": 4,
        "max_summary_tokens": 160, "max_qa_tokens": 160, "llm_base_url": base_url,
        "llm_api_key_env": "LONGCTX_TEST_KEY", "request_timeout_s": 300.0, "progress": False, "seed": 0,
        # one request at a time: the server has one slot, and queued requests would count their
        # waiting time against the timeout
        "max_concurrency": 1,
        **extra,
    }


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory):
    """An uninterrupted run: its output and the proxy's log."""
    out = tmp_path_factory.mktemp("reference")
    os.environ["LONGCTX_TEST_KEY"] = SECRET
    with Proxy(server.base_url) as proxy:
        manifest = generate.run(from_mapping(GenerateParams, tiny(out, proxy.base_url)))
    return out, manifest, proxy.entries()


def test_output_follows_the_contract(reference):
    out, manifest, log = reference
    records = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    assert len(records) == 1
    r = records[0]
    assert set(r) >= {"id", "source", "title", "text", "tokenizer", "n_tokens", "chunks", "sections",
                      "summaries", "hierarchical_qa", "diverse_qa"}
    assert r["id"] == "sensesensibility" and r["tokenizer"] == "llama3" and r["n_tokens"] <= 768
    assert r["chunks"][0]["token_start"] == 0 and r["chunks"][-1]["token_end"] == r["n_tokens"]
    assert len(r["summaries"]["chunks"]) == len(r["chunks"])
    assert len(r["summaries"]["sections"]) == len(r["sections"]) and r["summaries"]["global"]
    # counts never exceed the plan; everything kept passes the gates
    assert 0 < len(r["hierarchical_qa"]) <= 4 and 0 < len(r["diverse_qa"]) <= 4
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
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert counts["rejected_total"] == len(rejected) and all(x["reason"] for x in rejected)
    totals = manifest["totals"]
    assert totals["requests"] == len(log) and totals["prompt_tokens"] > 0 and totals["cache_hits"] == 0
    assert manifest["params"]["llm_api_key_env"] == "LONGCTX_TEST_KEY"


def test_api_key_never_written(reference):
    out, _, _ = reference
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


def _cached_contents(cache_dir: Path) -> set[str]:
    contents = set()
    for db in cache_dir.glob("*.sqlite"):
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            contents.update(row[0] for row in conn.execute("SELECT content FROM responses"))
    return contents


def test_sigkill_and_resume_resends_nothing_finished(server, reference, tmp_path):
    ref_out, _, _ = reference
    out = tmp_path / "killed"
    params_file = tmp_path / "params.yaml"
    with Proxy(server.base_url) as first:
        params_file.write_text(yaml.safe_dump(tiny(out, first.base_url)))
        env = {**os.environ, "LONGCTX_TEST_KEY": SECRET}
        child = subprocess.Popen([sys.executable, "-m", "longctx.generate", "--params", str(params_file)],
                                 cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        while time.time() < deadline and child.poll() is None:
            if len(_cached_contents(out / "cache")) >= 5 if (out / "cache").is_dir() else False:
                break
            time.sleep(0.2)
        assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read()[-2000:]}"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        done_before_kill = _cached_contents(out / "cache")
        completed = {e.body_hash for e in first.entries() if e.content in done_before_kill}
    assert not (out / "qa.jsonl").exists()
    assert len(completed) >= 5
    with Proxy(server.base_url) as second:
        params_file.write_text(yaml.safe_dump(tiny(out, second.base_url)))
        result = subprocess.run([sys.executable, "-m", "longctx.generate", "--params", str(params_file)],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        resent = {e.body_hash for e in second.entries()} & completed
    assert not resent, f"{len(resent)} requests finished before the kill were sent again"
    assert (out / "qa.jsonl").read_bytes() == (ref_out / "qa.jsonl").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["cache_hits"] >= len(completed)


def test_transport_faults_are_survived_counted_and_change_nothing(server, reference, tmp_path):
    ref_out, _, _ = reference
    faults = {2: "429", 3: "500", 5: "503", 7: "bad_json", 9: "drop", 11: "hang"}
    with Proxy(server.base_url, faults=faults, hang_s=35.0) as proxy:
        manifest = generate.run(from_mapping(GenerateParams, tiny(
            tmp_path / "faulty", proxy.base_url, request_timeout_s=30.0)))
        injected = [e.fault for e in proxy.entries() if e.fault]
    assert sorted(injected) == sorted(faults.values())
    retries = manifest["this_invocation"]["llm_total"]["retries_by_reason"]
    assert retries.get("429") == 1 and retries.get("5xx") == 2 and retries.get("timeout") == 1
    assert retries.get("bad_response") == 1 and retries.get("connection") == 1
    assert manifest["totals"]["failures"] == 0
    assert (tmp_path / "faulty" / "qa.jsonl").read_bytes() == (ref_out / "qa.jsonl").read_bytes()
