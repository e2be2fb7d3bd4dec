"""Hosted-API limits: requests wasted in a 429 storm, and throughput once the storm ends.

A real local HTTP server (``tests/fault_server.py``) plays a provider whose capacity is
``--capacity`` requests in flight: beyond it, a request is answered 429 at once (with
``Retry-After``) until the server has delivered ``--storm`` completions; then the storm is over
and every request is served after ``--latency`` seconds. The client sends ``--requests`` schema
calls at ``max_concurrency = --concurrency``, once with a fixed concurrency and once adaptive
(halve on 429, one more per round of answers). Reported per variant: 429s (wasted requests),
wall time, completions per second before and after the storm ended, the lowest and final
concurrency.

    python bench/bench_rate_limit.py          # ~1 min; writes bench/results/rate_limit.{md,csv}
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fault server is the tests' real HTTP server

from fault_server import FaultServer  # noqa: E402

from longctx.llm import Accounting, LLMClient, LLMConfig  # noqa: E402

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def run_variant(adaptive: bool, args: argparse.Namespace) -> dict:
    accounting = Accounting()
    with FaultServer(capacity=args.capacity, storm_until=args.storm, delay_s=args.latency,
                     retry_after_s=args.retry_after) as server:
        async def run() -> int:
            config = LLMConfig(base_url=server.base_url, model="fault-model", max_concurrency=args.concurrency,
                               timeout_s=600, max_attempts=10_000, adaptive_concurrency=adaptive)
            async with LLMClient(config, accounting=accounting) as llm:
                await asyncio.gather(*[llm.chat([{"role": "user", "content": f"bench {i}"}], schema=SCHEMA, seed=i)
                                       for i in range(args.requests)])
                return llm.concurrency
        started = time.monotonic()
        final = asyncio.run(run())
        wall = time.monotonic() - started
        log = list(server.log)
    delivered, storm_end_t = 0, log[-1]["t"]
    for entry in log:
        delivered += entry["delivered"]
        if delivered >= args.storm:
            storm_end_t = entry["t"]
            break
    first_t, last_t = log[0]["t"], log[-1]["t"]
    limits = accounting.to_dict()["llm_limits"]
    return {
        "variant": "adaptive" if adaptive else "fixed",
        "wasted_429": sum(e["fault"] == "storm429" for e in log),
        "requests_sent": len(log),
        "wall_s": round(wall, 2),
        "storm_rate_per_s": round(args.storm / max(storm_end_t - first_t, 1e-9), 1),
        "after_storm_rate_per_s": round((args.requests - args.storm) / max(last_t - storm_end_t, 1e-9), 1),
        "lowest_concurrency": limits.get("lowest_concurrency", args.concurrency),
        "final_concurrency": final,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--storm", type=int, default=150, help="completions delivered before the storm ends")
    parser.add_argument("--capacity", type=int, default=4, help="requests in flight the provider takes in the storm")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per served request")
    parser.add_argument("--retry-after", type=float, default=0.5, help="Retry-After of the 429s, seconds")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rate_limit"))
    args = parser.parse_args()
    rows = [run_variant(False, args), run_variant(True, args)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ideal = args.concurrency / args.latency
    lines = [
        "# 429 storm: fixed vs adaptive concurrency",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. `python bench/bench_rate_limit.py` "
        f"(requests {args.requests}, storm until {args.storm} completions, capacity {args.capacity} in flight, "
        f"max_concurrency {args.concurrency}, latency {args.latency} s, Retry-After {args.retry_after} s; "
        f"after the storm the ideal is {ideal:.0f} completions/s).",
        "",
        "| variant | wasted 429s | requests sent | wall s | completions/s in storm | completions/s after "
        "| lowest concurrency | final concurrency |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['wasted_429']} | {r['requests_sent']} | {r['wall_s']} | "
                     f"{r['storm_rate_per_s']} | {r['after_storm_rate_per_s']} | {r['lowest_concurrency']} | "
                     f"{r['final_concurrency']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
