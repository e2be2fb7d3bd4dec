"""Run a coroutine from synchronous code, also inside Jupyter (where a loop already runs).

A notebook cell cannot call ``asyncio.run`` because IPython's event loop is running in that
thread; the coroutine then runs to completion on a fresh loop in a worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

__all__ = ["run_sync"]


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, moved to a worker thread when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="longctx-async") as pool:
        return pool.submit(asyncio.run, coro).result()
