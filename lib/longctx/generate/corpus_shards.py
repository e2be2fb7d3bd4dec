"""Which documents a stage-1 shard reads: the whole corpus streamed, or its own prepared shard files.

Streaming is the simple path: every ``--shard i/n`` process reads the corpus from the start and
keeps documents ``position % n == i``. For the paper's books (one 37.2 GB ``.jsonl.zst`` file, a
single zstd stream that cannot be entered in the middle) that makes each of 64 array tasks
download and decompress all of it, 64 x 37.2 GB. ``datasets``' own sharding does not help: a
streamed data set shards by file, and this is one file.

So a sharded run reads prepared shard files instead: one pass over the corpus writes every usable
document, with its corpus position, to ``P`` zstd files (position ``p`` goes to file ``p % P``) and
bad documents to the manifest::

    python -m longctx.generate.corpus_shards --params params/paper/01_generate_qa.yaml --shards 64

A run with ``corpus_shards_dir`` set and ``--shard i/n`` (``n`` dividing ``P``) then reads only
files ``j % n == i``, merged by position: the same documents at the same positions as streaming,
so its output is identical, and each task reads about ``1/n`` of the corpus
(``bench/results/corpus_shards.md``). The pass stops after ``max_documents`` usable documents
when that is set. Killed before its manifest was written, it starts again from the beginning.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from ..core.config import ParamsError, load_params, parse_overrides, resolve_path
from .corpus import Document, Skipped, iter_corpus, open_lines
from .params import GenerateParams

__all__ = ["assigned_documents", "assigned_count", "prepare", "shard_file", "SOURCE_KEYS"]

# The parameters that decide which documents the corpus yields; prepared files fit a run only
# when these match.
SOURCE_KEYS = ("corpus", "corpus_data_files", "corpus_split", "corpus_revision", "text_field", "id_field",
               "title_field")


def shard_file(folder: Path, index: int, count: int) -> Path:
    return folder / f"{index:05d}-of-{count:05d}.jsonl.zst"


def _source(params: GenerateParams) -> dict[str, str]:
    return {k: getattr(params, k) for k in SOURCE_KEYS}


def _covers(manifest: dict[str, Any], max_documents: int) -> bool:
    """Prepared files hold every document a run with this ``max_documents`` needs."""
    return manifest["complete"] or (0 < max_documents <= manifest["documents"])


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def prepare(params: GenerateParams, count: int, folder: str | Path | None = None) -> dict[str, Any]:
    """Write the corpus of ``params`` into ``count`` shard files under ``folder`` (default
    ``params.corpus_shards_dir``) in one pass; returns the manifest. Does nothing when the folder
    already holds a matching, sufficient preparation."""
    import zstandard

    target = folder or params.corpus_shards_dir
    if not target:
        raise ValueError("no folder for the shard files: set corpus_shards_dir or pass one")
    folder = resolve_path(target)
    old = _read_manifest(folder)
    if old and old["source"] == _source(params) and old["shard_count"] == count and _covers(old, params.max_documents):
        return old
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)  # the old files stop being valid now
    tmp = [folder / f".{shard_file(folder, j, count).name}.tmp" for j in range(count)]
    # One compressor per file: a ZstdCompressor holds one compression context, and writers that
    # share it interleave into one stream (files come out empty).
    writers = [zstandard.ZstdCompressor(level=3).stream_writer(open(path, "wb"), closefd=True) for path in tmp]
    per_file = [0] * count
    skipped: list[dict[str, str]] = []
    position, complete = 0, True
    try:
        for item in iter_corpus(params.corpus, text_field=params.text_field, id_field=params.id_field,
                                title_field=params.title_field, data_files=params.corpus_data_files,
                                split=params.corpus_split, revision=params.corpus_revision):
            if isinstance(item, Skipped):
                skipped.append({"id": item.id, "source": item.source, "reason": item.reason})
                continue
            if params.max_documents and position >= params.max_documents:
                complete = False
                break
            row = {"position": position, "id": item.id, "title": item.title, "source": item.source,
                   "text": item.text}
            writers[position % count].write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            per_file[position % count] += 1
            position += 1
    finally:
        for writer in writers:
            writer.close()
    for j, path in enumerate(tmp):
        path.replace(shard_file(folder, j, count))
    manifest = {"source": _source(params), "shard_count": count, "documents": position, "complete": complete,
                "max_documents": params.max_documents, "documents_per_file": per_file, "skipped": skipped}
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    tmp_manifest = folder / ".manifest.json.tmp"
    tmp_manifest.write_text(text, encoding="utf-8")
    os.replace(tmp_manifest, folder / "manifest.json")
    return manifest


def _streamed(params: GenerateParams) -> Iterator[tuple[int, Document | Skipped]]:
    position = 0
    for item in iter_corpus(params.corpus, text_field=params.text_field, id_field=params.id_field,
                            title_field=params.title_field, data_files=params.corpus_data_files,
                            split=params.corpus_split, revision=params.corpus_revision):
        if isinstance(item, Skipped):
            if params.shard_index == 0:  # report each bad document once, not once per shard
                yield -1, item
            continue
        if params.max_documents and position >= params.max_documents:
            return
        if position % params.shard_count == params.shard_index:
            yield position, item
        position += 1


def _read_shard_file(path: Path, expected: int) -> Iterator[tuple[int, Document]]:
    seen = 0
    with open_lines(path) as handle:
        for raw in handle:
            row = json.loads(raw)
            seen += 1
            yield row["position"], Document(row["id"], row["title"], row["source"], row["text"])
    if seen != expected:
        raise RuntimeError(f"{path} holds {seen} documents, its manifest says {expected}: prepare again")


def _from_shard_files(params: GenerateParams, folder: Path, manifest: dict[str, Any]) -> Iterator[tuple[int, Document | Skipped]]:
    count, n = manifest["shard_count"], params.shard_count
    command = (f"python -m longctx.generate.corpus_shards --params PARAMS --shards {n * max(1, count // n)}")
    if manifest["source"] != _source(params):
        diff = {k: (manifest["source"].get(k), v) for k, v in _source(params).items() if manifest["source"].get(k) != v}
        raise RuntimeError(f"{folder} was prepared from another corpus ({diff}, as (prepared, params)); run {command}")
    if count % n:
        raise RuntimeError(f"{folder} holds {count} shard files, which {n} shards cannot split evenly; "
                           f"use a shard count dividing {count} or run {command}")
    if not _covers(manifest, params.max_documents):
        raise RuntimeError(f"{folder} holds the first {manifest['documents']} documents only (prepared with "
                           f"max_documents={manifest['max_documents']}); run {command} with this max_documents")
    if params.shard_index == 0:
        for bad in manifest["skipped"]:
            yield -1, Skipped(bad["id"], bad["source"], bad["reason"])
    mine = [j for j in range(count) if j % n == params.shard_index]
    files = [_read_shard_file(shard_file(folder, j, count), manifest["documents_per_file"][j]) for j in mine]
    for position, doc in heapq.merge(*files, key=lambda item: item[0]):
        if params.max_documents and position >= params.max_documents:
            return
        yield position, doc


def assigned_count(params: GenerateParams) -> int | None:
    """How many usable documents this shard will read, when known before reading them: from the
    prepared files' manifest, or from ``max_documents``; None for a streamed corpus without it
    (the corpus may hold fewer than ``max_documents``: then it is an upper bound)."""
    folder = resolve_path(params.corpus_shards_dir) if params.corpus_shards_dir else None
    manifest = _read_manifest(folder) if folder else None
    if manifest is not None:
        usable = min(manifest["documents"], params.max_documents or manifest["documents"])
    elif params.max_documents:
        usable = params.max_documents
    else:
        return None
    # positions 0..usable-1; shard i of n reads position p when p % n == i (streamed or prepared)
    i, n = params.shard_index, params.shard_count
    return max(0, (usable - i + n - 1) // n)


def assigned_documents(params: GenerateParams) -> Iterator[tuple[int, Document | Skipped]]:
    """(position, item) for this shard, in position order; position counts the corpus's usable
    documents, a bad document comes as (-1, Skipped) and only to shard 0."""
    folder = resolve_path(params.corpus_shards_dir) if params.corpus_shards_dir else None
    manifest = _read_manifest(folder) if folder else None
    if manifest is not None:
        yield from _from_shard_files(params, folder, manifest)
    elif folder is not None and params.shard_count > 1:
        raise FileNotFoundError(f"corpus_shards_dir {folder} holds no prepared corpus (no manifest.json); "
                                f"run: python -m longctx.generate.corpus_shards --params PARAMS --shards {params.shard_count}")
    else:
        yield from _streamed(params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.generate.corpus_shards", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True, help="YAML file of GenerateParams (stage 1)")
    parser.add_argument("--shards", type=int, required=True, help="number of shard files (the array size, or a multiple)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter")
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error("--shards must be >= 1")
    try:
        overrides = parse_overrides(args.set)
    except ParamsError as err:
        parser.error(str(err))
    try:
        params = load_params(GenerateParams, args.params, overrides)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not params.corpus_shards_dir:
        print("error: corpus_shards_dir is empty: set it in the params file or with --set", file=sys.stderr)
        return 2
    manifest = prepare(params, args.shards)
    print(f"{manifest['documents']} documents in {args.shards} files under "
          f"{resolve_path(params.corpus_shards_dir)}, {len(manifest['skipped'])} skipped"
          + ("" if manifest["complete"] else f" (stopped at max_documents={manifest['max_documents']})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
