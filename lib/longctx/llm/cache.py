"""Content-addressed, crash-safe store of validated LLM responses.

A run that dies (SIGKILL, OOM, pre-emption) and starts again must not pay for a request twice.
Each request is named by :func:`request_key`, the sha256 of the canonical JSON of everything
that determines the answer (model, messages, sampling parameters incl. seed, max_tokens,
schema). Each validated response is committed durably before the caller sees it (answers that
arrive during a commit share the next one: :mod:`longctx.llm.group_commit`).

Layout, designed for sharded runs::

    cache_dir/
        responses-0-of-4.sqlite      <- written by shard 0 only
        responses-1-of-4.sqlite      <- written by shard 1 only
        ...

Every process writes its own file (``writer_name``) and looks keys up in all ``*.sqlite`` files
of the folder, the others opened read-only, so a rerun with a different shard count still finds
every answer. Files use SQLite's WAL mode with ``synchronous=FULL``: a commit is on disk when it
returns, and a reader never blocks the writer.

Rejected answers are kept too. An answer cut at ``max_tokens`` or failing the schema was paid
for; the client retries it with ``seed + n``, and a resumed run must replay that decision
instead of asking again. Table ``deliveries`` keeps each rejected answer under
:func:`delivery_key` (the call's key and ``n``), committed before the retry is sent. Files
written before the table existed gain it when opened for writing; read-only they have none.

Threads: :meth:`put`/:meth:`put_many` may run on a worker thread (the client does so, to keep
fsync off the event loop) while :meth:`get` runs on another; they use separate connections.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["CachedResponse", "Delivery", "ResponseCache", "request_key", "delivery_key", "canonical_json"]

# Bump when the key recipe or the table layout changes; old files are then refused, not misread.
CACHE_FORMAT = "longctx-responses-v1"

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,           -- request_key(): sha256 hex
    content TEXT NOT NULL,          -- the model's message content, validated
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    model TEXT NOT NULL,            -- model name the server reported
    stage TEXT NOT NULL,            -- for audits only: the tags of the first call that stored it
    doc_id TEXT NOT NULL,
    created REAL NOT NULL           -- unix time
);
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY,           -- delivery_key(): the call's request_key and its n-th content retry
    attempt INTEGER NOT NULL,       -- the call's attempt number (1-based) that got this answer
    reason TEXT NOT NULL,           -- why it was rejected: length, schema, bad_json
    content TEXT NOT NULL,          -- the rejected content, as the server sent it
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    model TEXT NOT NULL,
    stage TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    created REAL NOT NULL
);
"""


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def request_key(model: str, messages: Sequence[Mapping[str, Any]], *, temperature: float | None,
                top_p: float | None, seed: int | None, max_tokens: int | None,
                schema: Mapping[str, Any] | None, extra: Mapping[str, Any] | None = None) -> str:
    """sha256 hex of everything that determines the answer (``extra``: server-specific request
    fields; absent or empty leaves the key of a plain request unchanged).

    Left out on purpose: the endpoint URL (the same model served elsewhere answers the same
    request), the API key, and the response_format mode (a transport detail: content is
    validated against ``schema`` whatever the server enforced).
    """
    payload = {"format": CACHE_FORMAT, "model": model, "messages": list(messages),
               "temperature": temperature, "top_p": top_p, "seed": seed,
               "max_tokens": max_tokens, "schema": schema}
    if extra:
        payload["extra"] = dict(extra)
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def delivery_key(call_key: str, n: int) -> str:
    """Address of the answer a call received on its ``n``-th content retry (0 = first send).

    Not the request_key of the re-sent body: with ``seed=None`` every retry sends the same
    body, and a rejected answer must never be found by a call that asks for a valid one.
    """
    return hashlib.sha256(f"{call_key}/delivery/{n}".encode("ascii")).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    """What the cache keeps of one validated completion."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str


@dataclass(frozen=True)
class Delivery:
    """A rejected answer as recorded: what the server sent, on which attempt, and why rejected."""

    response: CachedResponse
    attempt: int  # the call's attempt number (1-based) that received it
    reason: str   # the content failure it was rejected for


class ResponseCache:
    """Durable response store in ``folder``; this process writes ``writer_name`` only.

    ``writer_name`` gets a ``.sqlite`` suffix if it has none (e.g. ``responses-0-of-4``). Other
    ``*.sqlite`` files present in the folder when the cache is opened are searched read-only;
    call :meth:`refresh` to pick up files created later.
    """

    def __init__(self, folder: str | Path, writer_name: str = "responses"):
        if "/" in writer_name or "\\" in writer_name or writer_name in ("", ".", ".."):
            raise ValueError(f"writer_name must be a plain file name, got {writer_name!r}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        name = writer_name if writer_name.endswith(".sqlite") else f"{writer_name}.sqlite"
        self.path = self.folder / name
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        if not self.path.exists():
            self._create(self.path)
        self._writer = self._connect(self.path, read_only=False)
        self._check_format(self._writer, self.path)
        self._writer.executescript(_SCHEMA_SQL)  # a file from before `deliveries` gains the table
        # Own file first: in a resumed shard nearly every hit is there.
        self._readers: list[tuple[Path, sqlite3.Connection]] = [(self.path, self._connect(self.path, read_only=True))]
        self._no_deliveries: set[Path] = set()  # read-only files written before the table existed
        self.refresh()
        self._closed = False

    # ------------------------------------------------------------------ connections
    @staticmethod
    def _create(path: Path) -> None:
        """Create an initialised cache file at ``path`` atomically.

        Another shard may glob the folder at any moment; it must never find a file without
        its tables. So the file is built under a hidden name (not ``*.sqlite``) and linked into
        place, which also leaves an existing file alone if two processes race.
        """
        scratch = path.with_name(f".{path.name}.{os.getpid()}.init")
        scratch.unlink(missing_ok=True)
        conn = sqlite3.connect(scratch, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # stored in the file: every opener gets WAL
            conn.executescript(_SCHEMA_SQL)
            conn.execute("INSERT INTO meta VALUES ('format', ?)", (CACHE_FORMAT,))
        finally:
            conn.close()  # last connection: SQLite folds the WAL back and removes it
        try:
            os.link(scratch, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links (some FUSE and network mounts)
            if not path.exists():
                os.replace(scratch, path)
        finally:
            scratch.unlink(missing_ok=True)

    @staticmethod
    def _connect(path: Path, read_only: bool) -> sqlite3.Connection:
        if read_only:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                   isolation_level=None)
        else:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (see put_many).
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # WAL + FULL: fsync on every commit
        return conn

    @staticmethod
    def _check_format(conn: sqlite3.Connection, path: Path) -> None:
        try:
            row = conn.execute("SELECT value FROM meta WHERE name='format'").fetchone()
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{path}: not a longctx response cache ({err})") from err
        if row is None or row[0] != CACHE_FORMAT:
            found = row[0] if row else "none"
            raise ValueError(f"{path}: cache format {found!r}, expected {CACHE_FORMAT!r}; "
                             f"move the file away or use another cache folder")

    def refresh(self) -> None:
        """Open (read-only) any ``*.sqlite`` file of the folder not searched yet."""
        known = {path for path, _ in self._readers}
        for path in sorted(self.folder.glob("*.sqlite")):
            if path in known:
                continue
            conn = self._connect(path, read_only=True)
            self._check_format(conn, path)
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name='deliveries'").fetchone() is None:
                self._no_deliveries.add(path)
            with self._read_lock:
                self._readers.append((path, conn))

    # ------------------------------------------------------------------ access
    def get(self, key: str) -> CachedResponse | None:
        """The stored response for ``key``, from any file of the folder, or None."""
        with self._read_lock:
            for _, conn in self._readers:
                row = conn.execute(
                    "SELECT content, finish_reason, prompt_tokens, completion_tokens, model "
                    "FROM responses WHERE key=?", (key,)).fetchone()
                if row is not None:
                    return CachedResponse(*row)
        return None

    def get_delivery(self, key: str) -> Delivery | None:
        """The rejected answer recorded under ``key`` (a :func:`delivery_key`), or None."""
        with self._read_lock:
            for path, conn in self._readers:
                if path in self._no_deliveries:
                    continue
                row = conn.execute(
                    "SELECT content, finish_reason, prompt_tokens, completion_tokens, model, attempt, reason "
                    "FROM deliveries WHERE key=?", (key,)).fetchone()
                if row is not None:
                    return Delivery(CachedResponse(*row[:5]), row[5], row[6])
        return None

    def put(self, key: str, response: CachedResponse, *, stage: str = "", doc_id: str = "") -> None:
        """Store ``response`` under ``key``; it is on disk when this returns.

        A key already present keeps its first response (both were valid answers to the same
        request; keeping the first makes reruns agree with what was already handed out).
        """
        self.put_many([(key, response, stage, doc_id)])

    def put_many(self, items: Sequence[tuple[str, CachedResponse, str, str]]) -> None:
        """Store ``(key, response, stage, doc_id)`` items in one transaction, on disk on return.

        One fsync for the lot: :class:`~longctx.llm.group_commit.GroupCommitter` gathers the
        answers that arrive while a commit is under way, so the disk does not cap throughput.
        """
        self.write(items, ())

    def write(self, items: Sequence[tuple[str, CachedResponse, str, str]],
              deliveries: Sequence[tuple[str, Delivery, str, str]]) -> None:
        """Store valid answers (as :meth:`put_many`) and rejected ``(key, delivery, stage,
        doc_id)`` answers in one transaction, on disk on return. A key present keeps its first."""
        now = time.time()
        rows = [(key, r.content, r.finish_reason, r.prompt_tokens, r.completion_tokens, r.model, stage, doc_id, now)
                for key, r, stage, doc_id in items]
        rejected = [(key, d.attempt, d.reason, d.response.content, d.response.finish_reason, d.response.prompt_tokens,
                     d.response.completion_tokens, d.response.model, stage, doc_id, now)
                    for key, d, stage, doc_id in deliveries]
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                self._writer.executemany("INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._writer.executemany("INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                         rejected)
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    def __len__(self) -> int:
        """Responses stored in this process's own file."""
        with self._read_lock:
            return self._readers[0][1].execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    @property
    def files(self) -> list[Path]:
        """Every file searched, own file first."""
        return [path for path, _ in self._readers]

    def close(self) -> None:
        """Close all connections; safe to call twice."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        with self._read_lock:
            for _, conn in self._readers:
                conn.close()
        with self._write_lock:
            self._writer.close()

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.folder)!r}, writer_name={self.path.name!r}, files={len(self._readers)})"
