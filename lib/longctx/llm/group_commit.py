"""Group commit: answers that arrive while the cache is committing share the next commit.

Each answer must be durable before its caller sees it. Committing one answer per transaction
caps the client at one fsync per answer (about 450 answers/s on a busy 2-core VM, far fewer on a
network file system), below what 128 requests in flight at 200 ms deliver (640/s). Here one
writer thread commits everything that queued up during the previous commit in one transaction:
the guarantee is the same (nothing is handed out before it is on disk, so a kill loses no
handed-out answer), the number of fsyncs adapts to the load. Rejected answers
(:meth:`GroupCommitter.record`) ride in the same transactions: each is durable before the
client acts on it by sending a retry.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from .cache import CachedResponse, Delivery, ResponseCache

__all__ = ["GroupCommitter"]


class GroupCommitter:
    """Asyncio front of :meth:`ResponseCache.put_many` on a single writer thread.

    Use from one event loop; :meth:`close` waits for the last commit.
    """

    def __init__(self, cache: ResponseCache):
        self.cache = cache
        self.commits = 0  # transactions so far (<= answers stored)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-cache-writer")
        # (key, CachedResponse or Delivery, stage, doc_id, future waiting for the commit)
        self._pending: list[tuple[str, CachedResponse | Delivery, str, str, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    async def put(self, key: str, response: CachedResponse, stage: str, doc_id: str) -> None:
        """Return once ``response`` is committed (raises what the commit raised)."""
        await self._commit(key, response, stage, doc_id)

    async def record(self, key: str, delivery: Delivery, stage: str, doc_id: str) -> None:
        """Return once the rejected answer ``delivery`` is committed under ``key``."""
        await self._commit(key, delivery, stage, doc_id)

    async def _commit(self, key: str, item: CachedResponse | Delivery, stage: str, doc_id: str) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((key, item, stage, doc_id, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        await asyncio.shield(future)  # a cancelled caller must not cancel others' commit

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    valid = [i[:4] for i in batch if isinstance(i[1], CachedResponse)]
                    rejected = [i[:4] for i in batch if isinstance(i[1], Delivery)]
                    await loop.run_in_executor(self._executor, self.cache.write, valid, rejected)
                except Exception as err:  # disk full, locked file: every waiter must hear it
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(err)
                else:
                    self.commits += 1
                    for *_, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._drainer = None

    async def close(self) -> None:
        if self._drainer is not None:
            await asyncio.shield(self._drainer)
        self._executor.shutdown(wait=True)
