"""ResponseCache: content addressing, durability across reopen, sharded read-only lookup."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from longctx.llm.cache import CachedResponse, ResponseCache, request_key

MESSAGES = [{"role": "user", "content": "Zoë asks: was ist das?"}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


def _key(model: str = "m", messages: list = MESSAGES, **changes) -> str:
    sampling = dict(temperature=0.7, top_p=None, seed=3, max_tokens=100, schema=SCHEMA)
    sampling.update(changes)
    return request_key(model, messages, **sampling)


def test_key_is_canonical_and_covers_every_sampling_input():
    reordered = {"required": ["a"], "properties": {"a": {"type": "string"}}, "type": "object"}
    assert _key() == _key(schema=reordered)  # dict order does not matter
    variants = [_key(seed=4), _key(temperature=0.0), _key(max_tokens=101), _key(top_p=0.9),
                _key(schema=None), _key(model="other"),
                _key(messages=[{"role": "user", "content": "Zoe asks: was ist das?"}])]
    assert len({_key(), *variants}) == len(variants) + 1


def test_put_is_durable_and_visible_after_reopen(tmp_path):
    response = CachedResponse('{"a": "x"}', "stop", 10, 3, "m")
    with ResponseCache(tmp_path, "responses-0-of-1") as cache:
        assert cache.path.name == "responses-0-of-1.sqlite"
        cache.put("k1", response, stage="s", doc_id="d")
        cache.put("k1", CachedResponse("second", "stop", 1, 1, "m"))  # first answer wins
        assert cache.get("k1") == response and cache.get("k2") is None and len(cache) == 1
        journal = sqlite3.connect(cache.path).execute("PRAGMA journal_mode").fetchone()[0]
        assert journal == "wal"
    with ResponseCache(tmp_path, "responses-0-of-1") as cache:
        assert cache.get("k1") == response


def test_shards_write_their_own_file_and_read_all(tmp_path):
    shard0 = ResponseCache(tmp_path, "responses-0-of-2")
    shard1 = ResponseCache(tmp_path, "responses-1-of-2")
    shard0.put("from0", CachedResponse("zero", "stop", 1, 1, "m"))
    shard1.put("from1", CachedResponse("one", "stop", 1, 1, "m"))
    # a rerun with another shard count sees every answer, writing only its own file
    with ResponseCache(tmp_path, "responses-0-of-3") as rerun:
        assert rerun.get("from0").content == "zero" and rerun.get("from1").content == "one"
        assert rerun.files[0].name == "responses-0-of-3.sqlite" and len(rerun.files) == 3
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            rerun._readers[1][1].execute("DELETE FROM responses")
    # a file that appears later is found after refresh()
    shard0.refresh()
    assert shard0.get("from1").content == "one"
    shard0.close()
    shard0.close()  # idempotent
    shard1.close()


def test_foreign_sqlite_file_is_refused_with_a_clear_message(tmp_path):
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(ValueError, match="other.sqlite: not a longctx response cache"):
        ResponseCache(tmp_path, "mine")


def test_writer_name_must_be_a_plain_name(tmp_path):
    with pytest.raises(ValueError, match="plain file name"):
        ResponseCache(tmp_path, "../escape")


def test_group_commit_stores_every_answer_in_fewer_transactions(tmp_path):
    from longctx.llm.group_commit import GroupCommitter

    async def run(cache: ResponseCache) -> int:
        committer = GroupCommitter(cache)
        await asyncio.gather(*[committer.put(f"k{i}", CachedResponse(str(i), "stop", 1, 1, "m"), "s", "d")
                               for i in range(200)])
        await committer.close()
        return committer.commits

    with ResponseCache(tmp_path) as cache:
        commits = asyncio.run(run(cache))
        assert len(cache) == 200 and cache.get("k199").content == "199"
        assert 1 <= commits < 200  # answers that queued during a commit shared the next one


def test_group_commit_failure_reaches_every_waiter(tmp_path):
    from longctx.llm.group_commit import GroupCommitter

    async def run(cache: ResponseCache) -> list:
        committer = GroupCommitter(cache)
        cache.close()  # every later commit fails
        results = await asyncio.gather(*[committer.put(f"k{i}", CachedResponse("x", "stop", 1, 1, "m"), "s", "d")
                                         for i in range(3)], return_exceptions=True)
        await committer.close()
        return results

    results = asyncio.run(run(ResponseCache(tmp_path)))
    assert all(isinstance(r, sqlite3.ProgrammingError) for r in results)


def test_a_new_file_appears_complete_to_concurrent_globbers(tmp_path):
    # another shard may glob the folder while this one creates its file: it must never see a
    # file without tables (it would refuse it as foreign)
    import threading

    stop, seen_bad = threading.Event(), []

    def watch() -> None:
        while not stop.is_set():
            for path in tmp_path.glob("*.sqlite"):
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                try:
                    ResponseCache._check_format(conn, path)
                except (ValueError, sqlite3.OperationalError) as err:
                    seen_bad.append(str(err))
                finally:
                    conn.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    for i in range(30):
        ResponseCache(tmp_path, f"responses-{i}-of-30").close()
    stop.set()
    watcher.join()
    assert not seen_bad
    assert len(list(tmp_path.glob("*.sqlite"))) == 30 and not list(tmp_path.glob(".*.init"))


def test_cache_files_from_before_the_deliveries_table_still_work(tmp_path):
    from longctx.llm.cache import CACHE_FORMAT, Delivery, delivery_key

    old_schema = ("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
                  "CREATE TABLE responses (key TEXT PRIMARY KEY, content TEXT NOT NULL, finish_reason TEXT NOT NULL,"
                  " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, model TEXT NOT NULL,"
                  " stage TEXT NOT NULL, doc_id TEXT NOT NULL, created REAL NOT NULL);")
    for name in ("responses-0-of-2.sqlite", "responses-1-of-2.sqlite"):
        conn = sqlite3.connect(tmp_path / name)
        conn.executescript(old_schema)
        conn.execute("INSERT INTO meta VALUES ('format', ?)", (CACHE_FORMAT,))
        conn.execute("INSERT INTO responses VALUES (?, 'old', 'stop', 1, 1, 'm', '', '', 0)", (name,))
        conn.commit()
        conn.close()
    with ResponseCache(tmp_path, "responses-0-of-2") as cache:  # own file gains the table, the other stays read-only
        cut = CachedResponse("{\"a", "length", 3, 4, "m")
        cache.write([], [(delivery_key("k", 0), Delivery(cut, 1, "length"), "s", "d")])
        assert cache.get_delivery(delivery_key("k", 0)) == Delivery(cut, 1, "length")
        assert cache.get_delivery(delivery_key("k", 1)) is None and cache.get(delivery_key("k", 0)) is None
        assert cache.get("responses-1-of-2.sqlite").content == "old"
