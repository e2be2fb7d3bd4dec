"""Stage 1: books -> hierarchical and diverse QA (the paper's Algorithm 1), resumable and shardable.

Launch::

    python -m longctx.generate --params params/demo/01_generate_qa.yaml        # laptop demo
    python -m longctx.generate --params params/paper/01_generate_qa.yaml --shard 3/64
    python -m longctx.generate --params params/paper/01_generate_qa.yaml --merge
    python -m longctx.generate --params FILE --set n_diverse=10 --set seed=1   # overrides, checked
    python -m longctx.generate --params params/paper/01_generate_qa.yaml --dry-run --set max_documents=20
        # projects requests, prompt tokens and cost against a stand-in server; sends nothing

Layout of ``output_dir`` (a sharded run writes the same under ``shards/<i>-of-<n>/``)::

    qa.jsonl            one record per document, corpus order (docs/CONTRACTS.md); a document longer
                        than max_window_tokens gives one record per window (longctx.generate.windows)
    rejected.jsonl      every generation a quality gate refused, with its reason
    manifest.json       params, generator, counts, tokens, cost, timings, skipped documents
    work/docs/*.json    one file per finished document, written atomically (a windowed one: its windows)
    cache/*.sqlite      every validated response, keyed by the request's content

Kill it at any moment and start it again: finished documents are not redone and finished
requests are answered from the cache, so the output equals that of a run never killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .. import __version__
from ..core.config import ParamsError, load_params, parse_overrides, resolve_path, to_dict
from ..core.progress import Progress
from ..core.tokenizer import Tokenizer, load_tokenizer
from ..llm.accounting import Accounting
from ..llm.cache import ResponseCache
from ..llm.client import LLMClient, LLMConfig
from ..llm.dry_run import DryRunServer
from ..llm.errors import BudgetExhausted
from ..llm.server import EmbeddedServer
from ..llm.sync import run_sync
from .chunking import Chunking, chunk_document
from .corpus import Document, Skipped
from .corpus_shards import assigned_count, assigned_documents
from .params import GenerateParams
from .pipeline import DocumentFailed, expected_requests, generate_document
from .projection import format_projection, project
from .prompts import load_prompts
from .status import CostCap, ShardProgress, run_root
from .outputs import assemble, long_document_warnings, merge, totals, write_atomic
from .windows import DEFAULT_WINDOW_TOKENS, Window, split_windows

__all__ = ["run", "merge", "main", "shard_dir", "RunStopped"]


def shard_dir(params: GenerateParams) -> Path:
    """Where this process writes: ``output_dir`` or ``output_dir/shards/<i>-of-<n>``."""
    out = resolve_path(params.output_dir)
    if params.shard_count > 1:
        out = out / "shards" / f"{params.shard_index:05d}-of-{params.shard_count:05d}"
    return out


# Parameters that do not change what a document's record contains: a finished document is reused
# across changes of these, and redone after a change of any other.
_NOT_IN_FINGERPRINT = {"output_dir", "cache_dir", "max_documents", "max_concurrency", "documents_in_flight",
                       "request_timeout_s", "max_http_attempts", "price_input_per_mtok", "stall_timeout_s",
                       "requests_per_minute", "tokens_per_minute", "adaptive_concurrency",
                       "price_output_per_mtok", "shard_index", "shard_count", "progress",
                       "limits_shared_by", "max_cost_usd", "progress_interval_s",
                       # where the corpus is read from and what the dry run projects: not the records
                       "corpus_shards_dir", "corpus_documents", "projection_servers",
                       "server_prompt_tokens_per_s", "server_completion_tokens_per_s", "prefix_cache_tokens"}


# Parameters added after documents were fingerprinted, left out at the value that behaves as
# before they existed, so a document finished then is still reused.
_ADDED_LATER = {"top_p": 0.0, "max_window_tokens": DEFAULT_WINDOW_TOKENS}  # windows: _finished redoes long ones


def fingerprint(params: GenerateParams) -> str:
    """Hash of every parameter that shapes a document's record."""
    relevant = {k: v for k, v in to_dict(params).items()
                if k not in _NOT_IN_FINGERPRINT and not (k in _ADDED_LATER and v == _ADDED_LATER[k])}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _finished(path: Path, print_: str, max_window_tokens: int = 0) -> bool:
    """A document file from an earlier run that can be reused as is. A whole document longer than
    ``max_window_tokens`` (written before windows existed) is redone as windows; its chunk
    summaries come from the cache where the prompts are the same."""
    if not path.is_file():
        return False
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False  # a torn file cannot exist (atomic writes), but never trust, redo
    too_long = bool(max_window_tokens) and entry.get("record", {}).get("n_tokens", 0) > max_window_tokens
    return entry.get("status") == "ok" and entry.get("fingerprint") == print_ and not too_long


def _assigned(params: GenerateParams) -> Iterator[tuple[int, Document | Skipped]]:
    """(position, item) for this shard; position counts the corpus's usable documents."""
    return assigned_documents(params)  # streamed, or from prepared shard files (corpus_shards.py)


def prepare_document(doc: Document, tokenizer: Tokenizer, params: GenerateParams) -> tuple[Document, Chunking] | str:
    """Cut to ``max_document_tokens`` at a chunk boundary and chunk; a reason string if unusable."""
    chunking = chunk_document(doc.text, tokenizer, params.small_chunk_tokens, params.medium_chunk_tokens)
    if chunking.n_tokens < params.small_chunk_tokens:
        return f"shorter than one small chunk ({chunking.n_tokens} < {params.small_chunk_tokens} tokens)"
    if params.max_document_tokens and chunking.n_tokens > params.max_document_tokens:
        keep = [c for c in chunking.chunks if c.token_end <= params.max_document_tokens]
        doc = Document(doc.id, doc.title, doc.source, doc.text[:keep[-1].char_end])
        # Tokenise the cut text again rather than slicing ids: n_tokens must be the tokens of
        # the text as stored, also where a cut falls inside a pre-token (run-on text).
        chunking = chunk_document(doc.text, tokenizer, params.small_chunk_tokens, params.medium_chunk_tokens)
    return doc, chunking


class RunStopped(Exception):
    """The run stopped before its shard was done (cost cap, SIGTERM); nothing is wrong with it."""

    def __init__(self, reason: str, exit_code: int):
        super().__init__(reason)
        self.reason, self.exit_code = reason, exit_code


def task_limits(params: GenerateParams, concurrency: int) -> dict[str, float]:
    """This process's share of the run's limits: ``max_concurrency`` (or ``concurrency``, already
    capped by an embedded server), RPM and TPM divided by ``limits_shared_by``."""
    n = params.limits_shared_by
    return {"max_concurrency": max(1, concurrency // n), "requests_per_minute": params.requests_per_minute / n,
            "tokens_per_minute": params.tokens_per_minute / n}


def describe_limits(params: GenerateParams, limits: dict[str, float]) -> str:
    """One line for the task's log: what this task may send, and of what."""
    def number(value: float) -> str:
        return f"{value:,.0f}" if value >= 100 else f"{value:g}"  # 250,000 TPM, 62.5 RPM

    def rate(key: str, unit: str) -> str:
        whole = getattr(params, key)
        if not whole:
            return f"no {unit} limit"
        return f"{number(limits[key])} {unit}" + (f" (of {number(whole)})" if params.limits_shared_by > 1 else "")
    head = (f"limits of this task ({params.limits_shared_by} tasks at once share the run's): "
            if params.limits_shared_by > 1 else "limits of this task: ")
    return (head + f"{limits['max_concurrency']:g} requests in flight"
            + (f" (of {params.max_concurrency})" if params.limits_shared_by > 1 else "")
            + f", {rate('requests_per_minute', 'RPM')}, {rate('tokens_per_minute', 'TPM')}"
            + (f"; the whole run stops at ${params.max_cost_usd:g} (max_cost_usd)" if params.max_cost_usd else ""))


async def _run_async(params: GenerateParams, base_url: str, model: str, limits: dict[str, float],
                     out: Path, accounting: Accounting, stop_on_sigterm: bool = False,
                     root: Path | None = None) -> dict[str, Any]:
    tokenizer = load_tokenizer(params.tokenizer)
    prompts = load_prompts(resolve_path(params.prompts_dir) if params.prompts_dir else None)
    docs_dir = out / "work" / "docs"
    docs_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = resolve_path(params.cache_dir) if params.cache_dir else resolve_path(params.output_dir) / "cache"
    cache = ResponseCache(cache_dir, writer_name=f"responses-{params.shard_index}-of-{params.shard_count}")
    config = LLMConfig(base_url=base_url, model=model, api_key_env=params.llm_api_key_env,
                       max_concurrency=int(limits["max_concurrency"]), timeout_s=params.request_timeout_s,
                       max_attempts=params.max_http_attempts, response_format=params.response_format,
                       price_input_per_mtok=params.price_input_per_mtok,
                       price_output_per_mtok=params.price_output_per_mtok,
                       stall_timeout_s=params.stall_timeout_s, requests_per_minute=limits["requests_per_minute"],
                       tokens_per_minute=limits["tokens_per_minute"],
                       adaptive_concurrency=params.adaptive_concurrency)
    priced = bool(params.price_input_per_mtok or params.price_output_per_mtok)
    shard_progress: ShardProgress | None = None
    progress = Progress("QA generation", "request", enabled=params.progress, interval_s=params.progress_interval_s,
                        note=(lambda: f"${shard_progress.spent()['cost_usd']:.2f} spent") if priced else None)
    shard_progress = ShardProgress(out, params, progress, accounting, assigned_count(params))
    cap = CostCap(params.max_cost_usd, root or out, shard_progress)
    documents = shard_progress.documents
    skipped: list[dict] = []
    slots = asyncio.Semaphore(params.documents_in_flight)
    print_ = fingerprint(params)

    async def one(position: int, doc: Document, llm: LLMClient) -> None:
        try:
            prepared = await asyncio.to_thread(prepare_document, doc, tokenizer, params)
            if isinstance(prepared, str):
                skipped.append({"id": doc.id, "source": doc.source, "reason": prepared})
                documents["skipped"] += 1
                documents["done"] += 1
                return
            doc, chunking = prepared
            windows = await asyncio.to_thread(split_windows, doc, chunking, params.max_window_tokens, tokenizer,
                                              params.small_chunk_tokens, params.medium_chunk_tokens)
            for _, part_chunking, _ in windows:
                progress.add_total(expected_requests(params, part_chunking))
            entry: dict[str, Any] = {"position": position, "id": doc.id, "source": doc.source,
                                     "fingerprint": print_}
            async def one_window(part: Document, part_chunking: Chunking, window: Window | None) -> dict[str, Any]:
                # a window is a document of its own (longctx.generate.windows); one that fails is
                # reported alone, its siblings are kept
                sub: dict[str, Any] = {"id": part.id, "source": part.source}
                try:
                    result = await generate_document(llm, prompts, params, part, part_chunking, progress.step)
                    if window is not None:
                        result.record["window"] = window.as_record(doc.id, chunking.n_tokens)
                    sub.update(status="ok", record=result.record, rejects=result.rejects,
                               failed_items=result.failed_items, shortfall=result.shortfall,
                               qa_generations=result.qa_generations, walk=result.walk)
                except DocumentFailed as err:
                    sub.update(status="failed", reason=str(err), rejects=[])
                    documents["failed"] += 1
                sub["accounting"] = accounting.for_doc(part.id)
                return sub

            # a book's windows at once, like documents: its requests share the client's limits
            parts = await asyncio.gather(*(one_window(*w) for w in windows), return_exceptions=True)
            for outcome in parts:
                if isinstance(outcome, BudgetExhausted):
                    return  # not finished: no document file, a rerun does it (its answers so far are cached)
            for outcome in parts:
                if isinstance(outcome, BaseException):
                    raise outcome
            if len(parts) == 1 and windows[0][2] is None:
                entry.update(parts[0], id=doc.id)  # a whole document: the file as before windows existed
            else:
                entry.update(status="ok", windows=parts)
            write_atomic(docs_dir / f"{position:07d}.json", json.dumps(entry, ensure_ascii=False))
            documents["this_run"] += 1
            documents["done"] += 1
            progress.document_done()
        finally:
            slots.release()

    async def every_interval() -> None:
        while True:
            await asyncio.sleep(params.progress_interval_s)
            cap.refresh()
            shard_progress.write("running" if cap.reason is None else "stopping", cap.reason or "")
            progress.tick()

    def on_sigterm() -> None:
        # pre-emption, scancel, the time limit: stop like the cap (in-flight answers are cached).
        # Said at once in the progress file: SLURM's SIGKILL follows after KillWait (30 s by
        # default), maybe before the requests in flight are answered; it loses nothing either.
        print("[QA generation] SIGTERM: sending nothing more; waiting for the answers in flight", file=sys.stderr,
              flush=True)
        cap.stop("SIGTERM (pre-emption, scancel or the time limit)")
        shard_progress.write("stopping", cap.reason or "")

    loop = asyncio.get_running_loop()
    if stop_on_sigterm:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)

    def on_done(stage: str, outcome: str) -> None:
        if outcome == "cached":
            progress.cached()

    shard_progress.write()
    ticker = asyncio.create_task(every_interval())
    try:
        async with LLMClient(config, cache=cache, accounting=accounting, on_done=on_done, budget=cap) as llm:
            tasks = []
            assigned = 0
            for position, item in _assigned(params):
                if isinstance(item, Skipped):
                    skipped.append({"id": item.id, "source": item.source, "reason": item.reason})
                    continue
                assigned += 1
                if _finished(docs_dir / f"{position:07d}.json", print_, params.max_window_tokens):
                    documents["resumed"] += 1
                    documents["done"] += 1
                    continue
                if cap() is not None:
                    break
                await slots.acquire()
                if cap() is not None:
                    slots.release()
                    break
                tasks.append(asyncio.create_task(one(position, item, llm)))
            else:
                documents["total"] = assigned  # now known exactly (a streamed corpus may be shorter)
            await asyncio.gather(*tasks)
    except BaseException as err:
        ticker.cancel()
        shard_progress.write("failed", f"{type(err).__name__}: {err}"[:500])
        raise
    finally:
        if stop_on_sigterm:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGTERM)
    ticker.cancel()
    progress.close()
    cache.close()
    if cap.reason is not None:
        shard_progress.write("stopped", cap.reason)
        by_signal = cap.reason.startswith("SIGTERM")
        raise RunStopped(cap.reason, 143 if by_signal else 3)
    return {"skipped": skipped, "resumed_documents": documents["resumed"], "prompts": prompts.origin,
            "progress": shard_progress}


def run(params: GenerateParams, dry_run: bool = False, stop_on_sigterm: bool = False) -> dict[str, Any]:
    """Run (or resume) stage 1 for this shard and write its outputs; returns the manifest.

    Raises :class:`RunStopped` when the run's cost cap (``max_cost_usd``) was reached, or on
    SIGTERM with ``stop_on_sigterm`` (the command line sets it), before the shard was done:
    everything received is kept, and a rerun resumes.

    ``dry_run`` answers every request with :class:`~longctx.llm.dry_run.DryRunServer` and writes
    under ``<output_dir>/dry-run``: the manifest then projects a real run's requests and cost.
    """
    if dry_run:
        out_root = resolve_path(params.output_dir) / "dry-run"
        # nothing is sent, so no API key is needed: plan a run before the key exists. The stand-in's
        # answers are words of the whole prompt, not of the passage: the support check would reject
        # them and project replacements a real run need not send
        params = dataclasses.replace(params, output_dir=str(out_root), cache_dir=str(out_root / "cache"),
                                     llm_api_key_env="", min_answer_support=0.0)
    out = shard_dir(params)
    out.mkdir(parents=True, exist_ok=True)
    # a manifest says "this shard is done": not true from now until this run writes its own
    (out / "manifest.json").unlink(missing_ok=True)
    started = time.time()
    accounting = Accounting()
    with contextlib.ExitStack() as stack:
        if dry_run:
            server = stack.enter_context(DryRunServer(params.tokenizer, cache_tokens=params.prefix_cache_tokens))
            base_url, model, concurrency = server.base_url, params.llm_model, params.max_concurrency
            generator = f"dry run (stand-in for {params.llm_base_url or 'the embedded server'})"
        elif params.uses_embedded_server:
            server = stack.enter_context(EmbeddedServer(
                n_ctx=params.embedded_n_ctx, n_parallel=params.embedded_parallel,
                n_threads=params.embedded_threads or None))
            # llama.cpp queues requests beyond its slots; sending more only adds waiting
            # time to every request's timeout clock, so match the slots.
            base_url, model = server.base_url, params.llm_model
            concurrency = min(params.max_concurrency, params.embedded_parallel)
            generator = f"embedded llama.cpp server ({server.model_name})"
        else:
            base_url, model, concurrency = params.llm_base_url, params.llm_model, params.max_concurrency
            generator = base_url
        limits = task_limits(params, concurrency)
        if params.progress:
            print(f"[QA generation] shard {params.shard_index}/{params.shard_count}: {describe_limits(params, limits)}",
                  file=sys.stderr, flush=True)
        live = run_sync(_run_async(params, base_url, model, limits, out, accounting, stop_on_sigterm,
                                   run_root(params)))
        # what a server's prefix cache would reuse of this invocation's prompts, in their send order
        prefix_cache = server.prefix_cache() if dry_run else None
    assembled = assemble(out, [out / "work" / "docs"])
    finished = time.time()
    manifest = {
        "stage": "generate", "longctx_version": __version__,
        "params": to_dict(params),
        "generator": {"endpoint": generator, "model": model, "effective_concurrency": int(limits["max_concurrency"]),
                      "limits_of_this_task": limits, "limits_shared_by": params.limits_shared_by},
        "tokenizer": params.tokenizer,
        "shard": f"{params.shard_index}/{params.shard_count}",
        **{k: assembled[k] for k in ("counts", "book_tokens", "walk")},
        "skipped_documents": live["skipped"], "failed_documents": assembled["failed_documents"],
        "totals": totals(assembled["per_document"], assembled["book_tokens"]),
        "this_invocation": {"resumed_documents": live["resumed_documents"], **accounting.to_dict()},
        "per_document": assembled["per_document"],
        "timings": {"started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
                    "finished": datetime.fromtimestamp(finished, timezone.utc).isoformat(),
                    "wall_s": round(finished - started, 2)},
        "prompts": live["prompts"],
    }
    manifest["counts"]["documents_skipped"] = len(live["skipped"])
    if prefix_cache is not None:
        manifest["prefix_cache"] = prefix_cache
    manifest["warnings"] = long_document_warnings(manifest["counts"], params)
    for warning in manifest["warnings"]:
        print(f"[QA generation] WARNING: {warning}", file=sys.stderr, flush=True)
    if dry_run:  # the whole corpus's requests, tokens and wall time, scaled from this sample
        manifest["projection"] = project(manifest, params)
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False))
    live["progress"].write("finished")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True, help="YAML file of GenerateParams")
    parser.add_argument("--shard", default="", help="i/n: process slice i of n (0-based)")
    parser.add_argument("--merge", action="store_true", help="join finished shards into output_dir")
    parser.add_argument("--dry-run", action="store_true",
                        help="answer every request with a local stand-in and project requests, tokens and cost")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter (YAML value), checked like the file")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ParamsError as err:
        parser.error(str(err))
    if args.shard:
        try:
            index, count = (int(x) for x in args.shard.split("/"))
        except ValueError:
            parser.error(f"--shard expects i/n such as 3/64, got {args.shard!r}")
        overrides.update(shard_index=index, shard_count=count)
    try:
        params = load_params(GenerateParams, args.params, overrides)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        manifest = merge(params, args.dry_run) if args.merge else run(params, dry_run=args.dry_run,
                                                                       stop_on_sigterm=True)
    except RunStopped as stopped:
        print(f"stopped: {stopped.reason}. Finished documents and every answer received are kept; "
              + ("resubmit the task to go on" if stopped.exit_code == 143 else
                 "raise max_cost_usd (--set max_cost_usd=...) and rerun to go on")
              + f" (python -m longctx.generate.status --params {args.params} shows the run)", file=sys.stderr)
        return stopped.exit_code
    c = manifest["counts"]
    print(f"{c.get('documents_written', 0)} documents, {c['hierarchical_qa']} hierarchical + "
          f"{c['diverse_qa']} diverse QA, {c['rejected_total']} rejected, "
          f"{c['documents_skipped']} skipped, {c['documents_failed']} failed")
    if c.get("shortfall_hierarchical") or c.get("shortfall_diverse"):
        print(f"shortfall: {c.get('shortfall_hierarchical', 0)} hierarchical + {c.get('shortfall_diverse', 0)} "
              "diverse QA missing when the budget (qa_budget) ran out")
    t = manifest["totals"]
    now = manifest.get("this_invocation", {}).get("llm_total")
    if now is not None:  # a resumed run sends only what earlier runs did not finish
        print(f"this run: {now['requests']} LLM requests sent, {now['cache_hits']} calls answered from cache")
    print(f"{'all runs: ' if now is not None else ''}{t['requests']} LLM requests sent, {t['prompt_tokens']} prompt + "
          f"{t['completion_tokens']} completion tokens, cost estimate ${t['cost_usd']:.2f}"
          + (" (dry run: projected)" if args.dry_run else ""))
    if args.dry_run and not args.merge:
        print(format_projection(manifest["projection"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
