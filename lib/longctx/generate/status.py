"""A stage-1 run's live state on disk: one ``progress.json`` per shard, the cost cap, and ``status``.

Every running ``python -m longctx.generate`` (one array task, or a run without shards) rewrites
``progress.json`` in its output folder (``output_dir`` or ``output_dir/shards/<i>-of-<n>``)
atomically every ``progress_interval_s`` seconds and once when it ends. It says which task runs it
(host, pid, SLURM job), its state (``running``; ``stopping`` while the answers in flight come in
after the cost cap or SIGTERM; ``finished``; ``stopped`` with the reason; ``failed`` with the error), documents done of the shard's total, requests,
tokens and cost of this invocation and of all invocations so far (``spent``, carried over from
the file a killed or stopped run left), the rate and the ETA. docs/CONTRACTS.md lists the keys.

Read them all, while the tasks run or after, from any machine that sees the folder::

    python -m longctx.generate.status --params params/paper/01_generate_qa.yaml [--dry-run] [--json]

prints one row per shard and the totals (documents, requests, tokens, cost so far, ETA). A
``running`` file not rewritten for three intervals is shown as ``stale`` (a task killed by
SIGKILL or a node failure writes nothing more); on the same host a gone pid shows as ``killed``.

The cost cap (``max_cost_usd``) is for the whole run, every shard of ``output_dir``: each task
adds its own spend to the others' ``spent.cost_usd`` (re-read at every rewrite) and stops asking
the generator once the sum reaches the cap: the requests in flight finish and are cached, the
documents not finished are left for later, the file says ``stopped`` and the task exits with
status 3 and a message naming the cap. A rerun with a higher cap resumes: finished documents
and every answer received are kept. The sum can pass the cap by the requests in flight when it
is reached and by what the other tasks spent since their last rewrite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..core.config import ParamsError, load_params, parse_overrides, resolve_path
from ..core.progress import Progress, format_duration
from ..llm.accounting import Accounting
from .corpus_shards import assigned_count
from .params import GenerateParams

__all__ = ["PROGRESS_FILE", "ShardProgress", "CostCap", "read_run", "format_status", "main"]

PROGRESS_FILE = "progress.json"
_SPENT = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")
STALE_INTERVALS = 3  # a running file older than this many intervals: its writer is gone


def _write_atomic(path: Path, text: str) -> None:
    # no fsync: rewritten every few seconds, and a torn-free older copy is all a crash can leave
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # absent, or written by a version without it: the caller decides


def run_root(params: GenerateParams, dry_run: bool = False) -> Path:
    """The folder holding the run's shards: ``output_dir`` (``/dry-run`` for a dry run)."""
    root = resolve_path(params.output_dir)
    return root / "dry-run" if dry_run else root


def progress_files(root: Path) -> list[Path]:
    """Every ``progress.json`` of a run: the unsharded one, then the shards' in order."""
    found = [root / PROGRESS_FILE] if (root / PROGRESS_FILE).is_file() else []
    return found + sorted((root / "shards").glob(f"*-of-*/{PROGRESS_FILE}"))


class ShardProgress:
    """Keeps one shard's ``progress.json``; :meth:`write` rewrites it from the live counters."""

    def __init__(self, out: Path, params: GenerateParams, progress: Progress, accounting: Accounting,
                 documents_total: int | None, clock: Callable[[], float] = time.time):
        self.path = out / PROGRESS_FILE
        self.params, self.progress, self.accounting = params, progress, accounting
        self.clock = clock
        earlier = _read(self.path) or {}
        # spend of earlier invocations of this shard (killed, stopped, finished): money already gone
        self.before = {k: (earlier.get("spent") or {}).get(k, 0) for k in _SPENT}
        self.started = clock()
        self.documents = {"total": documents_total, "done": 0, "resumed": 0, "this_run": 0, "failed": 0,
                          "skipped": 0}
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        self.job = (f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}" if job
                    else os.environ.get("SLURM_JOB_ID", ""))

    def spent(self) -> dict[str, float]:
        now = self.accounting.total()
        return {"requests": self.before["requests"] + now.requests,
                "prompt_tokens": self.before["prompt_tokens"] + now.prompt_tokens,
                "completion_tokens": self.before["completion_tokens"] + now.completion_tokens,
                "cost_usd": round(self.before["cost_usd"] + now.cost_usd, 6)}

    def eta_s(self) -> float | None:
        """Seconds left: documents left at this run's document rate; before the first document
        (or with no known total), the requests' ETA of the progress line."""
        docs, total = self.documents, self.documents["total"]
        if total is not None and docs["this_run"] > 0:
            return max(0.0, (total - docs["done"]) * (self.clock() - self.started) / docs["this_run"])
        return self.progress.eta_s()

    def snapshot(self, state: str = "running", reason: str = "") -> dict[str, Any]:
        now = self.clock()
        total = self.accounting.total()
        elapsed = max(now - self.started, 1e-9)
        return {
            "shard": f"{self.params.shard_index}/{self.params.shard_count}", "state": state, "reason": reason,
            "host": socket.gethostname(), "pid": os.getpid(), "slurm_job": self.job,
            "started": round(self.started, 3), "updated": round(now, 3),
            "interval_s": self.params.progress_interval_s, "limits_shared_by": self.params.limits_shared_by,
            "max_cost_usd": self.params.max_cost_usd,
            "documents": dict(self.documents),
            "requests": {"done": self.progress.done, "planned": self.progress.total,
                         "from_cache": self.progress.from_cache},
            "this_run": {"requests": total.requests, "cache_hits": total.cache_hits,
                         "prompt_tokens": total.prompt_tokens, "completion_tokens": total.completion_tokens,
                         "cost_usd": round(total.cost_usd, 6)},
            "spent": self.spent(),
            "documents_per_hour": round(self.documents["this_run"] / elapsed * 3600, 3),
            "eta_s": None if state != "running" else (None if (e := self.eta_s()) is None else round(e, 1)),
        }

    def write(self, state: str = "running", reason: str = "") -> dict[str, Any]:
        snap = self.snapshot(state, reason)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path, json.dumps(snap, indent=1))
        return snap


class CostCap:
    """``max_cost_usd`` for the whole run: this shard's spend plus the others' last written spend.

    Call it before sending: None while under the cap, else the message to stop with. It also
    stops when :meth:`stop` was called (SIGTERM), with that reason.
    """

    def __init__(self, cap_usd: float, root: Path, shard: ShardProgress):
        self.cap, self.root, self.shard = cap_usd, root, shard
        self.others = 0.0
        self.reason: str | None = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the other shards' spend (every progress rewrite)."""
        if not self.cap:
            return
        total = 0.0
        for path in progress_files(self.root):
            if path != self.shard.path:
                total += float(((_read(path) or {}).get("spent") or {}).get("cost_usd", 0.0))
        self.others = total

    def total_usd(self) -> float:
        return self.shard.spent()["cost_usd"] + self.others

    def stop(self, reason: str) -> None:
        self.reason = self.reason or reason

    def __call__(self) -> str | None:
        if self.reason is None and self.cap and (spent := self.total_usd()) >= self.cap:
            self.reason = (f"the run's spend ${spent:.2f} (this shard ${self.shard.spent()['cost_usd']:.2f}, "
                           f"the others ${self.others:.2f}) reached max_cost_usd ${self.cap:.2f}")
        return self.reason


# ---------------------------------------------------------------------- reading a run


def _state(entry: dict[str, Any], now: float) -> str:
    state = entry.get("state", "?")
    if state not in ("running", "stopping"):
        return state
    if entry.get("host") == socket.gethostname() and entry.get("pid"):
        try:
            os.kill(int(entry["pid"]), 0)
        except ProcessLookupError:
            return "killed"
        except PermissionError:
            pass  # alive, another user's
    if now - entry.get("updated", 0) > STALE_INTERVALS * max(entry.get("interval_s", 15.0), 1.0):
        return "stale"
    return state


def read_run(root: Path, now: float | None = None, params: GenerateParams | None = None) -> dict[str, Any]:
    """Every shard's progress and the run's totals (the status command's data, as JSON).

    With ``params`` the documents of shards that have not started count in the total too (from
    the prepared corpus's manifest or ``max_documents``, when known)."""
    now = time.time() if now is None else now
    shards = []
    for path in progress_files(root):
        entry = _read(path)
        if entry is None:
            continue
        shards.append({**entry, "folder": str(path.parent), "shown_state": _state(entry, now),
                       "age_s": round(now - entry.get("updated", now), 1)})
    counts = {}
    if shards and "/" in shards[-1].get("shard", ""):
        counts["shard_count"] = int(shards[-1]["shard"].split("/")[1])
    docs_total = [s["documents"]["total"] for s in shards]
    totals = {
        "shards_seen": len(shards), **counts,
        "states": {st: sum(s["shown_state"] == st for s in shards) for st in sorted({s["shown_state"] for s in shards})},
        "documents_done": sum(s["documents"]["done"] for s in shards),
        "documents_total": None if None in docs_total else sum(docs_total),
        "spent": {k: round(sum(s["spent"][k] for s in shards), 6) for k in _SPENT},
        "max_cost_usd": max((s.get("max_cost_usd", 0) for s in shards), default=0),
    }
    # ETA of the run: documents left (known shards' plus, for shards not started, the average
    # shard's total) over the rate of the running shards, assuming as many run at once as now
    if params is not None and "shard_count" in counts:
        n = counts["shard_count"]
        every = [assigned_count(dataclasses.replace(params, shard_index=i, shard_count=n)) for i in range(n)]
        if None not in every:
            totals["documents_total"] = sum(every)
    running = [s for s in shards if s["shown_state"] == "running"]
    rate = sum(s["documents_per_hour"] for s in running) / 3600
    shard_count = counts.get("shard_count", len(shards))
    if totals["documents_total"] is not None and rate > 0:
        left = totals["documents_total"] - totals["documents_done"]
        if params is None:  # shards not started: as many documents as the average shard seen
            left += totals["documents_total"] / len(shards) * (shard_count - len(shards))
        totals["eta_s"] = round(left / rate, 1)
    else:
        totals["eta_s"] = max((s["eta_s"] for s in running if s.get("eta_s") is not None), default=None)
    return {"root": str(root), "now": now, "shards": shards, "totals": totals}


def _n(value: float) -> str:
    """12345678 -> 12.3M: token counts stay readable in a table."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def format_status(run: dict[str, Any]) -> str:
    """The table ``python -m longctx.generate.status`` prints."""
    shards, t = run["shards"], run["totals"]
    if not shards:
        return f"no progress.json under {run['root']}: no task of this run has started (or it ran before progress files existed)"
    header = ("shard", "state", "host / job", "updated", "documents", "requests", "prompt tok", "completion tok",
              "cost $", "docs/h", "ETA")
    rows = []
    for s in shards:
        docs = s["documents"]
        rows.append((s["shard"], s["shown_state"] + (f" ({s['reason']})" if s.get("reason") else ""),
                     f"{s.get('host', '?')} {s.get('slurm_job') or s.get('pid', '')}".strip(),
                     f"{format_duration(s['age_s'])} ago",
                     f"{docs['done']}/{'?' if docs['total'] is None else docs['total']}",
                     str(s["spent"]["requests"]), _n(s["spent"]["prompt_tokens"]), _n(s["spent"]["completion_tokens"]),
                     f"{s['spent']['cost_usd']:.2f}", f"{s['documents_per_hour']:.1f}",
                     "-" if s.get("eta_s") is None else format_duration(s["eta_s"])))
    seen = t.get("shard_count")
    rows.append(("total", ", ".join(f"{n} {st}" for st, n in t["states"].items())
                 + (f"; {seen - t['shards_seen']} not started" if seen and seen > t["shards_seen"] else ""),
                 "", "", f"{t['documents_done']}/{'?' if t['documents_total'] is None else t['documents_total']}",
                 str(t["spent"]["requests"]), _n(t["spent"]["prompt_tokens"]), _n(t["spent"]["completion_tokens"]),
                 f"{t['spent']['cost_usd']:.2f}", "", "-" if t["eta_s"] is None else format_duration(t["eta_s"])))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    if t["max_cost_usd"]:
        lines.append(f"cost cap (max_cost_usd): ${t['spent']['cost_usd']:.2f} of ${t['max_cost_usd']:.2f} spent")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.generate.status",
                                     description="Documents, requests, tokens, cost and ETA of every shard of a stage-1 run")
    parser.add_argument("--params", required=True, help="the run's YAML file of GenerateParams")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="the overrides the run was started with that move it (output_dir)")
    parser.add_argument("--dry-run", action="store_true", help="the dry run's shards (output_dir/dry-run)")
    parser.add_argument("--json", action="store_true", help="print the data as JSON instead of a table")
    parser.add_argument("--finished", metavar="I/N", default="",
                        help="only say whether shard I/N has finished (its manifest.json exists): exit 0 if "
                             "so, 1 if not (the vLLM array script skips starting a server for a finished shard)")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ParamsError as err:
        parser.error(str(err))
    try:
        params = load_params(GenerateParams, args.params, overrides)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.finished:
        try:
            index, count = (int(x) for x in args.finished.split("/"))
            shard = dataclasses.replace(params, shard_index=index, shard_count=count)
        except ValueError:
            parser.error(f"--finished expects i/n such as 3/64, got {args.finished!r}")
        folder = run_root(shard, args.dry_run)
        folder = folder / "shards" / f"{index:05d}-of-{count:05d}" if count > 1 else folder
        done = (folder / "manifest.json").is_file()
        print(f"shard {index}/{count} {'has finished' if done else 'has not finished'} ({folder})")
        return 0 if done else 1
    run = read_run(run_root(params, args.dry_run), params=params)
    print(json.dumps(run, indent=1) if args.json else format_status(run))
    return 0 if run["shards"] else 1


if __name__ == "__main__":
    sys.exit(main())
