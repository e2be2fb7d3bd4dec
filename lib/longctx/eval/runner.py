"""Run a suite: prepare (or load) samples, fit them to the model, generate, score, append rows.

:func:`open_backend` turns :class:`~longctx.eval.params.EvalConfig` into a backend (starting the
embedded llama.cpp server when no URL is given); :func:`run_suite` evaluates every (benchmark,
task, length) of the config on it, appends one row per group to ``results.csv``, writes every
prediction with its fit (prompt tokens, truncation, skip reason) to
``{output_dir}/{run_id}/predictions.jsonl``, and returns the new rows as a DataFrame.
Server answers are cached under ``{output_dir}/cache/{fingerprint}`` (openai backend), keyed by a
digest of the served weights (:func:`answer_cache`), never by the served name alone: a repeated
or resumed run on the same weights re-sends no finished request, a retrained checkpoint served
under the same name gets its own answers, and ``manifest.json`` counts requests, cache hits and
tokens. With ``shard="i/n"`` the run evaluates its share of the work list (:mod:`.shards`) into
``{output_dir}/{run_id}/shards/i-of-n/``; :func:`longctx.eval.shards.merge_shards` joins the shards.
A data set that cannot be loaded becomes a row with ``skipped = "skipped: not reachable (...)"``,
logged as such; the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from ..core.config import resolve_path
from ..core.progress import Progress
from . import metrics as M
from .babilong import length_tokens, load_babilong, score_babilong
from .backends import Backend, OpenAIBackend
from .hf_backend import HFBackend
from .fit import fit_sample
from .hub import Unavailable
from .infinitebench import IB_SYNTHETIC, load_infinitebench_hub, prepare_infinitebench_synthetic, score_infinitebench
from .longbench import load_longbench, metric_of, score_longbench
from .mmlu import load_mmlu, score_mmlu_text
from .params import EvalConfig
from .provenance import data_provenance, scoring_provenance
from .results import append_rows, row
from .ruler import RULER_TASKS, RulerContext, prepare_ruler
from .sample import Sample
from .shards import WorkItem, assign, parse_shard, work_list

__all__ = ["open_backend", "run_suite", "score_sample", "answer_cache", "shard_dir"]

log = logging.getLogger("longctx.evaluate")  # the command's name in its log lines


def answer_cache(cfg: EvalConfig, base_url: str = "", gguf: str | Path = "") -> tuple[Path, str]:
    """(folder of the response cache, fingerprint of the served weights) for an openai-backend run.

    The fingerprint is, first found: ``model_fingerprint``; the digest of ``model_path`` (an export
    folder, :func:`~longctx.core.fingerprint.folder_fingerprint`, or a weights file); the one the
    server reports (``longctx_fingerprint`` in ``/v1/models``: the project's hf_server), the
    export folder it names as ``root`` (vLLM serving a local path) or the GGUF file of llama.cpp's
    ``/props``; the embedded server's GGUF.
    Without one the served name cannot be trusted, so answers are kept for this run only
    (``{output_dir}/{run_id}/cache``, a resumed run with the same run_id still finds them) unless
    ``reuse_answers_by_name`` opts in to keying them by the name.
    """
    from ..core.fingerprint import file_fingerprint, folder_fingerprint

    root = resolve_path(cfg.output_dir)
    fingerprint = cfg.model_fingerprint
    if not fingerprint and cfg.model_path:
        path = resolve_path(cfg.model_path)
        if path.is_dir():
            fingerprint = folder_fingerprint(path)
        elif path.is_file():
            fingerprint = file_fingerprint(path)
        else:
            raise FileNotFoundError(f"model_path {cfg.model_path}: no such checkpoint folder or weights file")
    if not fingerprint and base_url:
        fingerprint = _served_fingerprint(base_url, cfg.llm_model)
    if not fingerprint and gguf:
        fingerprint = file_fingerprint(gguf)
    if fingerprint:
        return root / "cache" / fingerprint.replace("sha256:", "")[:24], fingerprint
    if cfg.reuse_answers_by_name:
        log.warning("answers keyed by the served name %r only (reuse_answers_by_name): a different model "
                    "served under that name would get these answers", cfg.llm_model)
        return root / "cache" / "by-name", ""
    log.warning("cannot tell which weights %s serves as %r (set model_path to the served folder, or "
                "model_fingerprint): its answers are cached for run %s only, not reused by other runs",
                base_url, cfg.llm_model, cfg.run_id)
    return root / (cfg.run_id or "unnamed-run") / "cache", ""


def _served_fingerprint(base_url: str, name: str) -> str:
    """The weights behind ``base_url`` when the server says where they are: ``longctx_fingerprint``
    (hf_server), ``root`` (vLLM: the folder it serves, readable when it runs on this node) or
    llama.cpp's ``/props`` ``model_path``; "" when it does not say."""
    from ..core.fingerprint import file_fingerprint, folder_fingerprint
    from .backends import _get, _server_root

    try:
        models = _get(base_url.rstrip("/") + "/models", 30).get("data", [])
    except (OSError, ValueError, AttributeError):
        models = []
    for m in models:
        if m.get("id") != name and len(models) > 1:
            continue
        if m.get("longctx_fingerprint"):
            return str(m["longctx_fingerprint"])
        root = Path(str(m.get("root") or ""))
        if m.get("root") and root.is_dir() and (root / "config.json").is_file():
            return folder_fingerprint(root)
    try:
        gguf = Path(str(_get(_server_root(base_url) + "/props", 30).get("model_path") or ""))
    except (OSError, ValueError, AttributeError):
        return ""
    return file_fingerprint(gguf) if gguf.name and gguf.is_file() else ""


@contextlib.contextmanager
def open_backend(cfg: EvalConfig, shard: str = "") -> Iterator[Backend]:
    """The configured backend; the embedded llama.cpp server lives as long as the ``with``."""
    if cfg.backend == "hf":
        yield HFBackend(cfg.hf_model_path, name=cfg.model_name, dtype=cfg.hf_dtype, device=cfg.hf_device,
                        attn_implementation=cfg.attn_implementation, rope=cfg.rope,
                        max_position_embeddings=cfg.max_position_embeddings, context_window=cfg.context_window)
        return
    writer = "responses" + (f"-{shard.replace('/', '-of-')}" if shard else "")  # one SQLite file per shard
    kwargs = dict(tokenizer=cfg.tokenizer or "server", api_key_env=cfg.llm_api_key_env,
                  context_window=cfg.context_window, template_tokens=cfg.template_tokens,
                  max_concurrency=cfg.max_concurrency, timeout_s=cfg.request_timeout_s, name=cfg.model_name,
                  top_logprobs=cfg.mmlu_top_logprobs, cache_writer=writer)
    if cfg.llm_base_url:
        cache_dir, fingerprint = answer_cache(cfg, cfg.llm_base_url)
        backend = OpenAIBackend(cfg.llm_base_url, cfg.llm_model, server=cfg.llm_server, cache_dir=cache_dir,
                                **kwargs)
        backend.model_fingerprint = fingerprint
        yield backend
        return
    from ..llm.server import EmbeddedServer, smollm2_gguf_path

    with EmbeddedServer(n_ctx=cfg.context_window or 8192, n_parallel=1,
                        n_threads=cfg.embedded_threads or None) as server:
        cache_dir, fingerprint = answer_cache(cfg, gguf=server.model_path or smollm2_gguf_path())
        backend = OpenAIBackend(server.base_url, cfg.llm_model, **kwargs, cache_dir=cache_dir,
                                server="llamacpp" if cfg.llm_server == "auto" else cfg.llm_server)
        backend.embedded_threads = server.n_threads
        backend.model_fingerprint = fingerprint
        yield backend


def score_sample(sample: Sample, prediction: str) -> tuple[float, str]:
    """(score in [0, 1], metric name) of one prediction, with the benchmark's official semantics."""
    if sample.benchmark == "ruler":
        metric = RULER_TASKS[sample.task].metric
        fn = M.string_match_part if metric == "string_match_part" else M.string_match_all
        return fn(M.ruler_postprocess(prediction), [str(r) for r in sample.references]), metric
    if sample.benchmark == "infinitebench":
        return score_infinitebench(sample.task, prediction, sample.references), "official"
    if sample.benchmark == "longbench":
        return (score_longbench(sample.task, prediction, sample.references, sample.meta.get("all_classes", [])),
                metric_of(sample.task))
    if sample.benchmark == "mmlu":
        return score_mmlu_text(prediction, sample.references), "accuracy"
    if sample.benchmark == "babilong":
        return score_babilong(sample.task, prediction, sample.references[0], sample.meta["question"]), "accuracy"
    raise ValueError(f"unknown benchmark {sample.benchmark!r}")


class _Suite:
    def __init__(self, cfg: EvalConfig, backend: Backend, run_id: str, out_dir: Path, run_dir: Path,
                 shared_results: bool):
        self.cfg, self.backend, self.run_id = cfg, backend, run_id
        self.template = backend.template_tokens()
        # the table of all runs (a shard's rows join it when merged), and this run's own table
        self.results = [run_dir / "results.csv"] + ([out_dir / "results.csv"] if shared_results else [])
        self.predictions = run_dir / "predictions.jsonl"
        self.predictions.parent.mkdir(parents=True, exist_ok=True)
        self.cache = str(resolve_path(cfg.cache_dir)) if cfg.cache_dir else None
        self.rows: list[dict[str, Any]] = []
        self.progress = Progress("evaluation", "task group", documents_label=None)

    def max_new(self, official: int) -> int:
        return min(official, self.cfg.max_new_tokens_cap) if self.cfg.max_new_tokens_cap else official

    def group(self, benchmark: str, task: str, length: int, load: Callable[[], list[Sample]], note: str = "") -> None:
        limit = self.cfg.infinitebench_input_limit if benchmark == "infinitebench" else 0
        base = dict(run_id=self.run_id, model=self.cfg.model_name, benchmark=benchmark, task=task,
                    context_length=length, truncation=self.cfg.truncation, input_limit=limit or "",
                    **scoring_provenance(benchmark, task))
        started = time.monotonic()
        window = self.backend.context_window
        if length > window:
            reason = f"skipped: length {length} exceeds the model's {window}-token window"
            self._add(base, n_samples=0, skipped=reason, note=note)
            return
        try:
            samples = load()
        except (Unavailable, ValueError) as err:  # data not reachable / task impossible at this length
            log.warning("%s/%s: %s", benchmark, task, err)
            self._add(base, n_samples=0, skipped=str(err), note=note)
            return
        for s in samples:
            s.max_new_tokens = self.max_new(s.max_new_tokens)
        fits = [fit_sample(s, self.backend.tokenizer, window, self.template, self.cfg.truncation, limit)
                for s in samples]
        send = [f.sample for f in fits if f.sample is not None]
        logprob_mode = benchmark == "mmlu" and self.cfg.mmlu_scoring == "loglikelihood"
        if logprob_mode:  # lm-eval's multiple_choice: the arg-max over the choices' log-probabilities
            gens = self.backend.choice_logprobs(send)
        else:
            gens = self.backend.generate(send)
        scores, prompt_tokens, failed, outside_top_k = [], [], 0, 0
        records, k = [], 0
        for f in fits:
            target = length - self.max_new(samples[0].max_new_tokens) - self.template if length else None
            rec = {"run_id": self.run_id, "benchmark": benchmark, "task": task, "context_length": length,
                   "prompt_tokens": f.prompt_tokens, "target_tokens": target, "budget": f.budget,
                   "truncated_tokens": f.truncated_tokens, "skipped": f.skipped_reason}
            if f.sample is not None:
                s, gen = f.sample, gens[k]
                k += 1
                rec.update(index=s.index, references=s.references, meta=s.meta)
                if logprob_mode and isinstance(gen, str):
                    failed += 1
                    rec.update(skipped=f"request failed: {gen}")
                    records.append(rec)
                    continue
                if logprob_mode:
                    prediction = s.choices[max(range(len(gen)), key=gen.__getitem__)]
                    score = float(prediction == s.references[0])
                    rec.update(choice_logprobs=gen)
                    outside_top_k += any(lp == float("-inf") for lp in gen)
                elif gen.error:
                    failed += 1
                    rec.update(skipped=f"request failed: {gen.error}")
                    records.append(rec)
                    continue
                else:
                    prediction = gen.text
                    score, _ = score_sample(s, prediction)
                rec.update(prediction=prediction, score=score,
                           server_prompt_tokens=getattr(gen, "prompt_tokens", 0))
                scores.append(score)
                prompt_tokens.append(s.n_tokens or f.prompt_tokens)
            records.append(rec)
        with self.predictions.open("a", encoding="utf-8") as handle:
            for rec in records:
                handle.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
        metric = score_sample(samples[0], "")[1] if samples else ""
        if benchmark == "mmlu":  # how the answer was read: the row says so
            metric = f"accuracy ({self.cfg.mmlu_scoring})"
        n_trunc = sum(1 for f in fits if f.sample is not None and f.truncated_tokens)
        extra = [note] if note else []
        by_limit = sum(1 for f in fits if f.sample is not None and f.truncated_tokens
                       and f.sample.meta.get("cut_by") == "input_limit")
        if by_limit:
            extra.append(f"{by_limit} truncated (middle, input cut to {limit} tokens)")
        if n_trunc - by_limit:
            extra.append(f"{n_trunc - by_limit} truncated ({self.cfg.truncation})")
        if failed:
            extra.append(f"{failed} requests failed")
        if outside_top_k:  # the arg-max is still exact unless all four were outside
            extra.append(f"{outside_top_k} with a choice outside the server's top-k log-probabilities")
        if self.cfg.max_new_tokens_cap:
            extra.append(f"generation capped at {self.cfg.max_new_tokens_cap} tokens")
        self._add(base, n_samples=len(samples), **data_provenance(samples),
                  n_scored=len(scores), n_truncated=n_trunc,
                  n_skipped=len(samples) - len(scores),
                  score=round(100 * sum(scores) / len(scores), 2) if scores else "",
                  metric=metric, mean_prompt_tokens=round(sum(prompt_tokens) / len(prompt_tokens), 1) if prompt_tokens else "",
                  skipped="" if scores else next((r["skipped"] for r in records if r["skipped"]), "skipped: no samples"),
                  note="; ".join(extra))
        log.info("%s/%s @%s: %s (%d scored) in %.1fs", benchmark, task, length,
                 self.rows[-1]["score"], len(scores), time.monotonic() - started)

    def _add(self, base: dict[str, Any], **values: Any) -> None:
        r = row(**base, **values)  # every column present ("" when empty), as in the CSV
        self.rows.append(r)
        for path in self.results:
            append_rows(path, [r])
        self.progress.step()  # every group ends in exactly one row


def shard_dir(out_dir: Path, run_id: str, shard: str) -> Path:
    """Where shard ``i/n`` of a run writes its rows, predictions and manifest."""
    index, count = parse_shard(shard)
    return Path(out_dir) / run_id / "shards" / f"{index}-of-{count}"


def run_suite(cfg: EvalConfig, backend: Backend, run_id: str = "", shard: str = "") -> pd.DataFrame:
    """Evaluate every configured (benchmark, task, length) on ``backend`` (only shard ``i/n``'s
    share of them when given); returns the new rows."""
    run_id = run_id or cfg.run_id or f"{cfg.model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = resolve_path(cfg.output_dir)
    run_dir = shard_dir(out_dir, run_id, shard) if shard else out_dir / run_id
    suite = _Suite(cfg, backend, run_id, out_dir, run_dir, shared_results=not shard)
    tok = backend.tokenizer
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (run_dir / "results.csv", run_dir / "predictions.jsonl"):
        stale.unlink(missing_ok=True)  # a rerun of this run (or shard) rewrites them; its answers are cached
    manifest = {"run_id": run_id, "shard": shard or "0/1", "params": _plain(cfg), "backend": backend.describe()}
    manifest_path = run_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=1, default=str))

    def budget(length: int, max_new: int) -> int:
        return length - suite.max_new(max_new) - suite.template

    jobs: dict[WorkItem, Callable[[], None]] = {}
    ctx = None
    if "ruler" in cfg.benchmarks:
        ctx = RulerContext(tok, cfg.haystack_corpus, suite.cache, cfg.verify_lengths,
                           str(resolve_path(cfg.squad_path)) if cfg.squad_path else "",
                           str(resolve_path(cfg.hotpotqa_path)) if cfg.hotpotqa_path else "",
                           qa_doc_order=cfg.ruler_qa_doc_order, qa_order_seed=cfg.ruler_qa_order_seed)
        for task in cfg.ruler_tasks:
            spec = RULER_TASKS[task]
            note = f"haystack: {cfg.haystack_corpus}" if spec.args.get("haystack") == "essay" else ""
            for length in cfg.ruler_lengths:
                jobs[WorkItem("ruler", task, length)] = lambda t=task, L=length, s=spec, n=note: suite.group(
                    "ruler", t, L, lambda: prepare_ruler(t, L, budget(L, s.tokens_to_generate), cfg.n_samples,
                                                         cfg.seed, ctx), n)
    if "infinitebench" in cfg.benchmarks:
        for task in cfg.infinitebench_tasks:
            if task in IB_SYNTHETIC:
                for length in cfg.infinitebench_lengths:
                    jobs[WorkItem("infinitebench", task, length)] = lambda t=task, L=length: suite.group(
                        "infinitebench", t, L, lambda: prepare_infinitebench_synthetic(
                            t, L, lambda m: budget(L, m), cfg.n_samples, cfg.seed, tok, suite.cache,
                            cfg.verify_lengths))
            else:
                local = cfg.infinitebench_files.get(task, "") or cfg.infinitebench_dir
                jobs[WorkItem("infinitebench", task, 0)] = lambda t=task, p=local: suite.group(
                    "infinitebench", t, 0, lambda: load_infinitebench_hub(
                        t, cfg.hub_max_rows, str(resolve_path(p)) if p else "", cfg.seed))
    if "longbench" in cfg.benchmarks:
        for task in cfg.longbench_tasks:
            local = cfg.longbench_files.get(task, "")
            jobs[WorkItem("longbench", task, 0)] = lambda t=task, p=local: suite.group(
                "longbench", t, 0, lambda: load_longbench(
                    t, cfg.hub_max_rows, str(resolve_path(p)) if p else "", cfg.longbench_hub_id, cfg.seed))
    if "mmlu" in cfg.benchmarks:
        jobs[WorkItem("mmlu", "mmlu", 0)] = lambda: suite.group("mmlu", "mmlu", 0, lambda: load_mmlu(
            cfg.mmlu_shots, cfg.mmlu_max_questions,
            str(resolve_path(cfg.mmlu_dev_path)) if cfg.mmlu_dev_path else "",
            str(resolve_path(cfg.mmlu_test_path)) if cfg.mmlu_test_path else ""))
    if "babilong" in cfg.benchmarks:
        hub_id = str(resolve_path(cfg.babilong_hub_id)) if Path(resolve_path(cfg.babilong_hub_id)).is_dir() \
            else cfg.babilong_hub_id
        prompts = str(resolve_path(cfg.babilong_prompts_file)) if cfg.babilong_prompts_file else ""
        for task in cfg.babilong_tasks:
            for length in cfg.babilong_lengths:
                jobs[WorkItem("babilong", task, length_tokens(length))] = lambda t=task, L=length: suite.group(
                    "babilong", t, length_tokens(L), lambda: load_babilong(t, L, hub_id, prompts, cfg.hub_max_rows, cfg.seed),
                    f"prompts: {'official file' if prompts else 'lm-eval task files'}")
    items = work_list(cfg)
    assert list(jobs) == items, "runner and shards.work_list disagree on the work list"
    if shard:
        index, count = parse_shard(shard)
        mine = [item for item, s in zip(items, assign(items, count, cfg, backend.context_window)) if s == index]
        log.info("shard %s: %d of %d groups (%s)", shard, len(mine), len(items),
                 ", ".join(i.label for i in mine) or "none")
    else:
        mine = items
    manifest["groups"] = [item.label for item in mine]
    manifest_path.write_text(json.dumps(manifest, indent=1, default=str))
    suite.progress.add_total(len(mine))
    for item in mine:
        jobs[item]()
    manifest["finished"] = True  # what --merge checks: a shard killed half-way is not merged
    accounting = getattr(backend, "accounting", None)  # server backends count their requests
    if accounting is not None:
        # since the backend opened: one backend per run in evaluate.py and notebook 04
        llm = accounting.to_dict()
        manifest.update(llm_total=llm["llm_total"], llm_by_stage=llm["llm_by_stage"],
                        choice_logprob_requests=getattr(backend, "logprob_requests", 0))
    manifest_path.write_text(json.dumps(manifest, indent=1, default=str))
    suite.progress.close()
    return pd.DataFrame(suite.rows)


def _plain(cfg: EvalConfig) -> dict[str, Any]:
    from ..core.config import to_dict

    return to_dict(cfg)
