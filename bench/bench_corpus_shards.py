"""Bytes each stage-1 shard reads from disk: streaming the whole corpus vs prepared shard files.

A local ``.jsonl.zst`` shaped like the paper's books file (one JSON line per book, title under
``meta.short_book_title``; text drawn from Jane Austen's words so it compresses like prose) is
read the way a ``--shard i/n`` task reads it, through ``longctx.generate.corpus_shards.assigned_documents``
(what ``longctx.generate.stage`` uses), once per shard in this process. Bytes read are the process's
``rchar`` in ``/proc/self/io`` (every byte returned by read(2), page cache or not), taken before
and after each shard's pass: the compressed bytes a task pulls from disk or the network.

* streamed: every shard reads the source from the start and keeps ``position % n == i``;
* prepared: one ``python -m longctx.generate.corpus_shards`` pass (measured too), then each shard reads
  its own shard files.

    python bench/bench_corpus_shards.py          # writes bench/results/corpus_shards.{md,csv}
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BOOKS = 400            # documents in the synthetic books file
WORDS_PER_BOOK = 12_000
BOOKS_FILE_GB = 37.2   # the paper's pretrain/book.jsonl.zst, for the extrapolation line


def rchar() -> int:
    with open("/proc/self/io") as handle:
        return int(next(line for line in handle if line.startswith("rchar:")).split()[1])


def make_books(path: Path) -> None:
    import zstandard

    from longctx.generate.austen import load_austen

    words = re.findall(r"\S+", " ".join(text for _, _, text in load_austen()))
    rng = random.Random(0)
    with zstandard.ZstdCompressor(level=3).stream_writer(open(path, "wb"), closefd=True) as out:
        for i in range(BOOKS):
            start = rng.randrange(len(words) - WORDS_PER_BOOK)
            text = " ".join(words[start:start + WORDS_PER_BOOK])  # real prose, a different stretch per book
            row = {"text": text, "meta": {"short_book_title": f"Book {i}", "url": f"https://example.org/{i}"}}
            out.write((json.dumps(row) + "\n").encode())


def read_shard(params) -> tuple[int, int, float]:
    from longctx.generate.corpus_shards import assigned_documents

    before, started = rchar(), time.perf_counter()
    docs = sum(1 for position, _ in assigned_documents(params) if position >= 0)
    return rchar() - before, docs, time.perf_counter() - started


def main() -> int:
    from longctx.generate import corpus_shards
    from longctx.core.config import from_mapping
    from longctx.generate.params import GenerateParams

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "book.jsonl.zst"
        make_books(source)
        size = source.stat().st_size
        for n in (8, 64):
            base = {"corpus": str(source), "title_field": "meta.short_book_title", "output_dir": tmp,
                    "llm_base_url": "http://stand-in/v1", "shard_count": n}
            streamed = [read_shard(from_mapping(GenerateParams, {**base, "shard_index": i})) for i in range(n)]
            shards_dir = str(Path(tmp) / f"prepared-{n}")
            params = from_mapping(GenerateParams, {**base, "corpus_shards_dir": shards_dir})
            before, started = rchar(), time.perf_counter()
            corpus_shards.prepare(params, n)
            prep_bytes, prep_s = rchar() - before, time.perf_counter() - started
            prepared = [read_shard(from_mapping(GenerateParams, {**base, "corpus_shards_dir": shards_dir,
                                                                  "shard_index": i})) for i in range(n)]
            assert sum(d for _, d, _ in streamed) == sum(d for _, d, _ in prepared) == BOOKS
            for design, reads, extra in (("streamed", streamed, 0), ("prepared", prepared, prep_bytes)):
                per = [b for b, _, _ in reads]
                rows.append({"shards": n, "design": design, "source_MB": round(size / 1e6, 2),
                             "preparation_MB_read": round(extra / 1e6, 2),
                             "preparation_s": round(prep_s, 2) if extra else 0.0,
                             "per_shard_MB_read_median": round(statistics.median(per) / 1e6, 3),
                             "per_shard_MB_read_max": round(max(per) / 1e6, 3),
                             "per_shard_over_source": round(statistics.median(per) / size, 4),
                             "all_shards_MB_read": round((sum(per) + extra) / 1e6, 1),
                             "per_shard_s_median": round(statistics.median(s for _, _, s in reads), 3)})
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "corpus_shards.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keys = list(rows[0])
    table = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    table += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    s64 = next(r for r in rows if r["shards"] == 64 and r["design"] == "streamed")
    p64 = next(r for r in rows if r["shards"] == 64 and r["design"] == "prepared")
    lines = [
        "# Bytes read per stage-1 shard: streamed corpus vs prepared shard files",
        "",
        f"{date.today()}, {platform.machine()}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}.",
        f"Command: `python bench/bench_corpus_shards.py`. Source: {BOOKS} synthetic books of {WORDS_PER_BOOK:,} "
        "Austen words each in one `.jsonl.zst` (title under `meta.short_book_title`), "
        f"{rows[0]['source_MB']} MB compressed. Bytes = `rchar` of /proc/self/io around each shard's pass "
        "through `corpus_shards.assigned_documents`; the preparation pass reads the source once and "
        "writes the shard files.",
        "",
        *table,
        "",
        f"At 64 shards a streamed shard reads {s64['per_shard_over_source']:.2f}x the source and a prepared one "
        f"{p64['per_shard_over_source']:.4f}x; for the paper's {BOOKS_FILE_GB} GB books file that is "
        f"{BOOKS_FILE_GB * s64['per_shard_over_source']:.1f} GB vs {BOOKS_FILE_GB * p64['per_shard_over_source']:.2f} GB "
        f"per task, {BOOKS_FILE_GB * s64['all_shards_MB_read'] / s64['source_MB'] / 1000:.2f} TB vs "
        f"{BOOKS_FILE_GB * p64['all_shards_MB_read'] / p64['source_MB'] / 1000:.3f} TB for the whole array "
        "(preparation included), if the whole file is used. With `max_documents` set the preparation pass "
        "stops after that many books. A prepared shard reads a little more than 1/n of the source because "
        "each shard file is compressed on its own (less shared context); the preparation pass costs one "
        "read of the source plus the compression of what it writes.",
    ]
    (RESULTS / "corpus_shards.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "lib"))
    sys.exit(main())
