"""MMLU against lm-evaluation-harness: on the same rows (a local copy in ``cais/mmlu``'s layout)
our 5-shot prompt is byte-equal to lm-eval's ``mmlu_{subject}`` context, and on the same model
our log-likelihood scores are lm-eval's: the HF backend's choice log-probabilities equal those of
lm-eval's ``HFLM.loglikelihood`` (a tiny random Llama), and through the embedded llama.cpp server
the top-k log-probabilities of ``/v1/completions`` give the same arg-max as llama.cpp's native
``/completion`` probabilities. A repeated run asks the server nothing."""

from __future__ import annotations

import json
import math
import urllib.request
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest
from test_eval_fixtures import corpus_dir, prose, tiny_hf_model, write_jsonl

from longctx.core.config import from_mapping
from longctx.eval.backends import OpenAIBackend, _top_logprobs
from longctx.eval.hf_backend import HFBackend
from longctx.eval.mmlu import LETTERS, load_mmlu
from longctx.eval.params import EvalConfig
from longctx.eval.runner import open_backend, run_suite

_SUBJECTS = ("astronomy", "college_biology")


def _rows(subject: str, split: str) -> list[dict]:
    n = 5 if split == "dev" else 4
    return [{"question": f"  Which {subject.replace('_', ' ')} body number {i} is {{closest}}?\n",
             "subject": subject, "choices": [f"the star {i}", "a planet", f"moon {{{{x}}}}", "a comet"],
             "answer": (i + len(subject)) % 4} for i in range(n)]


@pytest.fixture(scope="module")
def mmlu_files(tmp_path_factory) -> dict:
    """Our local files (config ``all``) and a folder in the hub's per-subject layout for lm-eval."""
    import datasets

    root = tmp_path_factory.mktemp("mmlu")
    dev = [r for s in _SUBJECTS for r in _rows(s, "dev")]
    test = [r for s in _SUBJECTS for r in _rows(s, "test")]
    configs = []
    for subject in _SUBJECTS:
        for split in ("dev", "test"):
            (root / "hub" / subject).mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(_rows(subject, split)).to_parquet(str(root / "hub" / subject / f"{split}.parquet"))
        configs.append(f"- config_name: {subject}\n  data_files:\n  - split: dev\n    path: {subject}/dev.parquet\n"
                       f"  - split: test\n    path: {subject}/test.parquet\n")
    (root / "hub" / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n")
    with pytest.MonkeyPatch.context() as mp:  # datasets keys a local folder's cache by its name
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "datasets_cache"))
        yield {"dev": str(write_jsonl(root / "dev.jsonl", dev)), "test": str(write_jsonl(root / "test.jsonl", test)),
               "hub": root / "hub"}


def _lm_eval_task(subject: str, hub: Path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(str(resources.files("lm_eval") / "tasks" / "mmlu" / "default" / f"mmlu_{subject}.yaml"))
    assert cfg["dataset_path"] == "cais/mmlu" and cfg["output_type"] == "multiple_choice"
    cfg["dataset_path"] = str(hub)
    cfg.pop("tag", None)
    return ConfigurableTask(config=cfg)


def test_five_shot_prompt_equals_lm_eval(mmlu_files, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = load_mmlu(5, 0, mmlu_files["dev"], mmlu_files["test"])
    for subject in _SUBJECTS:
        task = _lm_eval_task(subject, mmlu_files["hub"])
        docs = list(task.test_docs())
        mine = [s for s in ours if s.meta["subject"] == subject]
        assert len(mine) == len(docs) == 4
        for sample, doc in zip(mine, docs):
            assert sample.prompt == task.fewshot_context(doc, 5)
            assert [" " + c for c in sample.choices] == [task.config.target_delimiter + c for c in task.doc_to_choice(doc)]
            assert sample.references == [LETTERS[task.doc_to_target(doc)]]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    text = prose(300, 3) + " ".join(f"Answer: {c}. {c}." for c in "ABCD" * 20)
    return tiny_hf_model(tmp_path_factory.mktemp("tiny"), text, max_positions=1024)


def test_hf_loglikelihood_equals_lm_eval_hflm(tiny_model, mmlu_files):
    """Same checkpoint, same prompts: our next-token log-probabilities of ' A'..' D' are what
    lm-eval's HFLM computes for the continuations (and so the arg-max, lm-eval's acc)."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    samples = load_mmlu(2, 0, mmlu_files["dev"], mmlu_files["test"])[:6]  # 2 shots: inside the 1024 window
    # choices of several tokens: lm-eval sums their log-probabilities (the other code path)
    samples.append(replace(samples[0], choices=["Elizabeth", "zebra crossing", "42", "Darcy's"]))
    ours = HFBackend(str(tiny_model), dtype="float32", device="cpu", attn_implementation="eager")
    lm = HFLM(pretrained=str(tiny_model), dtype="float32", device="cpu", batch_size=1)
    got = ours.choice_logprobs(samples)
    requests = [Instance("loglikelihood", {}, (s.prompt, " " + c), i) for s in samples for i, c in enumerate(s.choices)]
    theirs = [ll for ll, _ in lm.loglikelihood(requests)]
    assert len(ours.tokenizer.encode(" zebra crossing")) > 1
    for k, lps in enumerate(got):
        ref = theirs[4 * k:4 * k + 4]
        assert lps == pytest.approx(ref, abs=2e-4)
        assert max(range(4), key=lps.__getitem__) == max(range(4), key=ref.__getitem__)


def test_top_logprobs_of_both_answer_shapes():
    """vLLM / OpenAI's legacy completions shape and llama.cpp's (as its server answered here)."""
    vllm = {"tokens": [" B"], "token_logprobs": [-0.4], "top_logprobs": [{" B": -0.4, " A": -1.5, "B": -3.0}]}
    llama = {"content": [{"id": 2, "token": " B", "logprob": -0.4,
                          "top_logprobs": [{"id": 2, "token": " B", "logprob": -0.4}, {"id": 3, "token": " A", "logprob": -1.5}]}]}
    assert _top_logprobs(vllm) == {" B": -0.4, " A": -1.5, "B": -3.0}
    assert _top_logprobs(llama) == {" B": -0.4, " A": -1.5}


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read())


def test_llama_cpp_server_loglikelihood_and_its_cache(mmlu_files, tmp_path, monkeypatch):
    """Real server: the OpenAI-compatible top-k equals llama.cpp's native probabilities (another
    endpoint, another format), the suite scores from it and records the mode, and a second run
    over the same output folder sends no request."""
    pytest.importorskip("xllamacpp")
    from longctx.llm.server import EmbeddedServer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    samples = load_mmlu(0, 3, mmlu_files["dev"], mmlu_files["test"])  # 0 shots: short prompts, a fast test
    with EmbeddedServer(n_ctx=2048, n_parallel=1) as server:
        backend = OpenAIBackend(server.base_url, "SmolLM2-135M-Instruct", context_window=2048, template_tokens=8)
        got = backend.choice_logprobs(samples)
        for sample, lps in zip(samples, got):
            native = _post(server.base_url[:-len("/v1")] + "/completion",
                           {"prompt": sample.prompt, "n_predict": 1, "n_probs": 20, "temperature": 0.0,
                            "post_sampling_probs": False})
            probs = {p["token"]: p["logprob"] for p in native["completion_probabilities"][0]["top_logprobs"]}
            ref = [probs.get(" " + c, -math.inf) for c in sample.choices]
            assert any(math.isfinite(x) for x in lps)
            assert lps == pytest.approx(ref, abs=1e-3)
        cfg = from_mapping(EvalConfig, {
            "llm_base_url": server.base_url, "benchmarks": ["mmlu"], "mmlu_shots": 0, "mmlu_max_questions": 3,
            "mmlu_dev_path": mmlu_files["dev"], "mmlu_test_path": mmlu_files["test"],
            "haystack_corpus": str(corpus_dir(tmp_path)), "output_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "samples")})
        runs = {}
        for run_id in ("first", "again"):
            with open_backend(cfg) as b:
                rows = run_suite(cfg, b, run_id)
                runs[run_id] = b.logprob_requests, rows.iloc[0]
        cfg.mmlu_top_logprobs = 1  # at most one letter can be in the top 1: the row says how many were not
        with open_backend(cfg) as b:
            top1 = run_suite(cfg, b, "top1").iloc[0]
    assert "3 with a choice outside the server's top-k log-probabilities" in top1.note
    outside = sum(any(x == -math.inf for x in lps) for lps in got)  # 0-shot SmolLM2 spreads its mass
    assert (f"{outside} with a choice outside" in str(runs["first"][1].note)) == (outside > 0)
    (sent, first), (resent, again) = runs["first"], runs["again"]
    assert (sent, resent) == (3, 0)
    assert first.metric == "accuracy (loglikelihood)" and first.n_scored == 3 and again.score == first.score
    want = sum(max(range(4), key=lps.__getitem__) == "ABCD".index(s.references[0]) for s, lps in zip(samples, got))
    assert float(first.score) == pytest.approx(100 * want / 3, abs=0.01)
