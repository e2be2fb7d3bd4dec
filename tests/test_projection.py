"""The dry run's projection: arithmetic checked by hand, and the printed lines of a real dry run."""

from __future__ import annotations

import json

import pytest

from longctx import generate
from longctx.core.config import from_mapping
from longctx.generate.params import GenerateParams
from longctx.generate.projection import format_projection, project
from austen_books import write_openings



def test_projection_matches_a_hand_computation():
    manifest = {"counts": {"documents_written": 18, "documents_failed": 1, "documents_skipped": 1},
                "totals": {"calls": 2200, "prompt_tokens": 8_000_000, "completion_tokens": 300_000, "cost_usd": 7.47}}
    params = from_mapping(GenerateParams, {"llm_base_url": "http://x/v1", "corpus_documents": 7772,
                                           "projection_servers": 8, "server_prompt_tokens_per_s": 15000,
                                           "server_completion_tokens_per_s": 1800})
    p = project(manifest, params)
    # by hand: 20 documents sampled, 7772 / 20 = 388.6
    assert p["sampled_documents"] == 20 and p["scale"] == pytest.approx(388.6) and p["extrapolated"]
    assert p["requests"] == 854_920                      # 2200 x 388.6
    assert p["prompt_tokens"] == 3_108_800_000           # 8e6 x 388.6
    assert p["completion_tokens"] == 116_580_000         # 3e5 x 388.6
    assert p["cost_usd"] == 2902.84                      # 7.47 x 388.6 = 2902.842
    # 3.1088e9 / 15000 = 207,253.33 s prefill; 1.1658e8 / 1800 = 64,766.67 s decode; sum 272,020 s
    assert p["server_hours"] == pytest.approx(272_020 / 3600)
    assert p["wall_hours"] == pytest.approx(34_002.5 / 3600)     # on 8 servers: 34,002.5 s = 9.445 h
    assert p["wall_days"] == pytest.approx(0.393547, abs=1e-6)
    text = format_projection(p)
    assert "Projection for 7,772 documents (corpus_documents), extrapolated from the 20 this dry run sampled" in text
    assert "854,920 requests, 3,108,800,000 prompt + 116,580,000 completion tokens, cost estimate $2,902.84" in text
    assert "75.6 server-hours" in text and "on 8 server(s): 9.4 h (0.39 days)" in text
    # without corpus_documents nothing is scaled, and the output says so
    plain = project(manifest, from_mapping(GenerateParams, {"llm_base_url": "http://x/v1"}))
    assert plain["scale"] == 1.0 and not plain["extrapolated"] and plain["prompt_tokens"] == 8_000_000
    assert "set corpus_documents to extrapolate" in format_projection(plain)


def test_dry_run_prints_the_projection(tmp_path, capsys):
    folder = write_openings(tmp_path / "books", 2)
    path = tmp_path / "p.yaml"
    path.write_text(f"corpus: {folder}\noutput_dir: {tmp_path / 'out'}\nsmall_chunk_tokens: 512\n"
                    "medium_chunk_tokens: 1024\nmax_document_tokens: 2048\nn_hierarchical: 4\nn_diverse: 4\n"
                    "progress: false\nllm_base_url: http://stand-in/v1\ncorpus_documents: 7772\n"
                    "projection_servers: 4\n")
    assert generate.main(["--params", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "dry-run" / "manifest.json").read_text())
    t, p = manifest["totals"], manifest["projection"]
    assert p["sampled_documents"] == 2 and p["requests"] == round(t["calls"] * 3886)
    assert p["prompt_tokens"] == round(t["prompt_tokens"] * 3886)
    assert "extrapolated from the 2 this dry run sampled (x3886.0" in out and "on 4 server(s)" in out
    assert "the judge pass (judge_qa, off) would add" in out and p["judge"]["requests"] > 0
    # the stand-in's answers fill half their budget (defaults: 400 for summaries, 300 for QA)
    assert 150 <= t["completion_tokens"] / t["calls"] <= 215


def test_judge_projection_by_hand():
    """Off: one judge request per accepted QA, prompts as long as the mean QA prompt, 8-token verdicts.
    On: the judge requests the dry run sent, scaled to the whole run."""
    stages = {"hierarchical": {"calls": 30, "prompt_tokens": 150_000, "completion_tokens": 4_500},
              "diverse": {"calls": 70, "prompt_tokens": 250_000, "completion_tokens": 10_500},
              "summary_chunk": {"calls": 100, "prompt_tokens": 500_000, "completion_tokens": 20_000}}
    manifest = {"counts": {"documents_written": 2, "hierarchical_qa": 25, "diverse_qa": 50},
                "totals": {"calls": 200, "prompt_tokens": 900_000, "completion_tokens": 35_000, "cost_usd": 0.0},
                "this_invocation": {"llm_by_stage": stages}}
    params = from_mapping(GenerateParams, {"llm_base_url": "http://x/v1", "corpus_documents": 20,
                                           "server_prompt_tokens_per_s": 10_000, "server_completion_tokens_per_s": 1_000,
                                           "price_input_per_mtok": 1.0, "price_output_per_mtok": 2.0})
    judge = project(manifest, params)["judge"]
    # 75 QA x 10 (scale) = 750 requests; 400,000 / 100 = 4,000 prompt tokens each -> 3,000,000; 750 x 8 = 6,000
    assert not judge["enabled"] and judge["requests"] == 750
    assert judge["prompt_tokens"] == 3_000_000 and judge["completion_tokens"] == 6_000
    assert judge["cost_usd"] == 3.01                               # 3.0 + 0.012
    # 300 s + 6 s judge vs 9,000,000 / 10,000 + 350,000 / 1,000 = 1,250 s without it
    assert judge["server_hours"] == pytest.approx(306 / 3600)
    assert judge["server_time_share"] == pytest.approx(306 / 1250)
    assert "the judge pass (judge_qa, off) would add: 750 requests" in format_projection(project(manifest, params))

    stages["judge"] = {"calls": 50, "prompt_tokens": 200_000, "completion_tokens": 400}
    manifest["totals"]["calls"] = 250  # the whole run is this invocation
    on = project(manifest, from_mapping(GenerateParams, {**{"llm_base_url": "http://x/v1", "corpus_documents": 20},
                                                         "judge_qa": True}))["judge"]
    assert on["enabled"] and on["requests"] == 500 and on["prompt_tokens"] == 2_000_000
