"""LLM client overhead: wall time against a fixed-latency server vs the ideal, by concurrency.

A local OpenAI-compatible server (a separate process, this file with ``--serve``) answers every
request after exactly ``--latency`` seconds with a small valid JSON completion. The client sends
``concurrency x rounds`` distinct schema requests (2 KB prompts, the size of a short chunk
prompt) at concurrency 1, 8, 32, 128 and 256. The ideal wall time is ``requests x latency /
concurrency``; the ratio wall / ideal is the client's overhead (goals: <= 1.05 at 32 and at 256).
Each level runs ``--runs`` times, the median is reported, in three variants (``aiohttp-raw``, the
floor, and):

* ``client``: no cache (HTTP, JSON, validation, accounting);
* ``client+cache``: plus a durable SQLite cache (one fsync'd commit per answer, fresh folder).

Client CPU per request (process time / requests) is reported too: it is what limits throughput
once the server is fast, and it does not depend on the latency chosen.

    python bench/bench_client.py                  # ~3 min; writes bench/results/client_overhead.{md,csv}
    python bench/bench_client.py --latency 2 --rounds 5 --levels 32,128,256 --name client_overhead_2s
    python bench/bench_client.py --runs 1 --rounds 3 --out runs/bench/client   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from longctx.llm import LLMClient, LLMConfig, ResponseCache

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
          "required": ["question", "answer"], "additionalProperties": False}
LEVELS = (1, 8, 32, 128, 256)
VARIANTS = ("aiohttp-raw", "client", "client+cache")


# ---------------------------------------------------------------------- server process


def serve(latency_s: float) -> None:
    """Answer every chat completion after ``latency_s``; print the port, run until killed."""
    from aiohttp import web

    content = json.dumps({"question": "Who wrote Emma?", "answer": "Jane Austen."})
    body = json.dumps({"id": "bench", "object": "chat.completion", "model": "bench-model",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 512, "completion_tokens": 16, "total_tokens": 528}}).encode()

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(latency_s)
        return web.Response(body=body, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# ---------------------------------------------------------------------- client side

_FILLER = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
           "must be in want of a wife. ")


def prompt(tag: str, index: int, chars: int) -> list[dict[str, str]]:
    """A distinct request of about ``chars`` characters (distinct: no cache hit, ever)."""
    text = (_FILLER * (chars // len(_FILLER) + 1))[:chars]
    return [{"role": "system", "content": "You write questions about books."},
            {"role": "user", "content": f"{tag} request {index}\n{text}"}]



async def one_run(base_url: str, concurrency: int, n_requests: int, prompt_chars: int, cache_dir: Path | None,
                  tag: str) -> tuple[float, float]:
    """Wall seconds and client CPU seconds for ``n_requests`` distinct requests."""
    config = LLMConfig(base_url=base_url, model="bench-model", max_concurrency=concurrency, timeout_s=60)
    prompts = [prompt(tag, i, prompt_chars) for i in range(n_requests)]
    cache = ResponseCache(cache_dir, "bench") if cache_dir else None
    try:
        async with LLMClient(config, cache=cache) as llm:
            cpu, wall = time.process_time(), time.perf_counter()
            results = await asyncio.gather(*[llm.chat(p, schema=SCHEMA, temperature=0.7, seed=1, max_tokens=64,
                                                      stage="bench", doc_id=str(i % 10))
                                              for i, p in enumerate(prompts)])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        if cache:
            cache.close()
    assert len(results) == n_requests and not any(r.cached for r in results)
    return wall, cpu


async def raw_run(base_url: str, concurrency: int, n_requests: int, prompt_chars: int, tag: str) -> tuple[float, float]:
    """The floor: bare aiohttp posts under a semaphore; the body encoded, the answer and its
    content parsed (work any client does), nothing else."""
    prompts = [prompt(tag, i, prompt_chars) for i in range(n_requests)]
    slots = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={"Content-Type": "application/json"}) as session:
        async def one(messages: list[dict[str, str]]) -> dict:
            body = json.dumps({"model": "bench-model", "messages": messages, "response_format": SCHEMA}).encode()
            async with slots:
                async with session.post(base_url + "/chat/completions", data=body) as resp:
                    answer = json.loads(await resp.read())
            return json.loads(answer["choices"][0]["message"]["content"])
        cpu, wall = time.process_time(), time.perf_counter()
        results = await asyncio.gather(*[one(p) for p in prompts])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert len(results) == n_requests
    return wall, cpu


async def warm_up(base_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(50):
            try:
                async with session.post(base_url + "/chat/completions", json={}) as resp:
                    await resp.read()
                return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "os": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    parser.add_argument("--rounds", type=int, default=10, help="requests per level = concurrency x rounds")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per level (median reported)")
    parser.add_argument("--prompt-chars", type=int, default=2000)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)),
                        help="concurrency levels, comma-separated (default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for the .md and .csv")
    parser.add_argument("--name", default="client_overhead", help="file name of the .md and .csv, without suffix")
    args = parser.parse_args()
    if args.serve:
        serve(args.latency)
        return

    server = subprocess.Popen([sys.executable, __file__, "--serve", "--latency", str(args.latency)],
                              stdout=subprocess.PIPE, text=True)
    load_before = os.getloadavg()
    rows = []
    try:
        base_url = f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
        asyncio.run(warm_up(base_url))
        with tempfile.TemporaryDirectory(prefix="bench-client-") as scratch:
            for concurrency in [int(x) for x in args.levels.split(",")]:
                n = concurrency * args.rounds
                ideal = n * args.latency / concurrency
                walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
                cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
                for run in range(args.runs):
                    for variant in VARIANTS:  # interleaved, so load drift hits every variant alike
                        tag = f"{variant}/{concurrency}/{run}"
                        if variant == "aiohttp-raw":
                            wall, cpu = asyncio.run(raw_run(base_url, concurrency, n, args.prompt_chars, tag))
                        else:
                            cache_dir = Path(scratch) / tag.replace("/", "-") if "cache" in variant else None
                            wall, cpu = asyncio.run(one_run(base_url, concurrency, n, args.prompt_chars,
                                                            cache_dir, tag))
                        walls[variant].append(wall)
                        cpus[variant].append(cpu)
                raw_median = statistics.median(walls["aiohttp-raw"])
                for variant in VARIANTS:
                    median = statistics.median(walls[variant])
                    rows.append({"variant": variant, "concurrency": concurrency, "requests": n,
                                 "latency_s": args.latency, "ideal_s": round(ideal, 3),
                                 "wall_s_runs": " ".join(f"{w:.3f}" for w in walls[variant]),
                                 "median_wall_s": round(median, 3), "ratio": round(median / ideal, 4),
                                 "ratio_vs_raw": round(median / raw_median, 4),
                                 "requests_per_s": round(n / median, 1),
                                 "client_cpu_us_per_request": round(statistics.median(cpus[variant]) / n * 1e6)})
                    print(f"{variant:13s} c={concurrency:4d} n={n:5d} ideal {ideal:6.2f}s median {median:6.3f}s "
                          f"ratio {median / ideal:.4f} vs raw {median / raw_median:.4f} "
                          f"cpu/request {rows[-1]['client_cpu_us_per_request']} us", flush=True)
    finally:
        server.kill()
        server.wait()
    write_results(Path(args.out), rows, args, load_before, os.getloadavg())


def write_results(out: Path, rows: list[dict], args: argparse.Namespace, load_before, load_after) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{args.name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    info = machine()
    command = "python bench/bench_client.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k != "serve" and v != parser_default(k))
    lines = [
        "# LLM client overhead vs a fixed-latency server",
        "",
        f"Generated by `bench/bench_client.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Command: `{command}`",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores; {info['os']}; Python {info['python']}, "
        f"aiohttp {info['aiohttp']}. Load average (1 min) {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (the machine is shared; the server process runs on the same cores).",
        "",
        f"Server latency {args.latency} s per request; requests per level = concurrency x {args.rounds}; "
        f"prompts {args.prompt_chars} characters, json_schema validated; median of {args.runs} runs. "
        "Ideal = requests x latency / concurrency. Goals: ratio <= 1.05 at concurrency 32 and 256.",
        "",
        "Variants: `aiohttp-raw` is the floor on this machine at this moment (bare aiohttp under a "
        "semaphore, JSON encoded and parsed, nothing else); `client` is `LLMClient` without a cache "
        "(cache key, schema validation, retry bookkeeping, accounting); `client+cache` adds the durable "
        "SQLite cache (group-committed, fsync'd). Runs of the three are interleaved.",
        "",
        "| variant | concurrency | requests | ideal s | median wall s | ratio to ideal | ratio to raw "
        "| req/s | client CPU us/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['concurrency']} | {r['requests']} | {r['ideal_s']:.2f} | "
                     f"{r['median_wall_s']:.3f} | {r['ratio']:.3f} | {r['ratio_vs_raw']:.3f} | "
                     f"{r['requests_per_s']:.0f} | {r['client_cpu_us_per_request']} |")
    for level in (32, 256):
        at = {r["variant"]: r for r in rows if r["concurrency"] == level}
        if len(at) != len(VARIANTS):
            continue
        verdict = "met" if at["client"]["ratio"] <= 1.05 else "missed"
        lines += ["", f"At concurrency {level} the client runs at {at['client']['ratio']:.3f}x ideal "
                  f"({at['client+cache']['ratio']:.3f}x with the cache): goal {verdict}. Bare aiohttp, "
                  f"measured alongside, runs at {at['aiohttp-raw']['ratio']:.3f}x, so the client's own "
                  f"share is {at['client']['ratio_vs_raw']:.3f}x ({at['client+cache']['ratio_vs_raw']:.3f}x "
                  "with the cache); the rest is this machine (scheduling of the client, the server process "
                  "and other jobs on 2 shared cores)."]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / args.name}.md and .csv")


def parser_default(name: str):
    return {"latency": 0.2, "rounds": 10, "runs": 3, "prompt_chars": 2000, "levels": ",".join(map(str, LEVELS)),
            "out": str(ROOT / "bench" / "results"), "name": "client_overhead"}.get(name)


if __name__ == "__main__":
    main()
