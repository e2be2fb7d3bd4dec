"""One spawn of gloo ranks per world size, shared by the sharded tests of several files.

Starting a rank costs more than the sharded cases it runs: ~3 s of CPU to import torch and
~4.5 s more for transformers, against tens of milliseconds per tiny case; on a 2-core machine a
4-rank spawn is ~15 s of wall time. So a test module registers its worker for a world size at
import (collection) time, and the first test that asks for that world spawns it once
(:func:`longctx.train.dist.spawn`: real processes, real gloo) and runs every registered worker on
the same ranks, in registration order; each worker calls ``dist.init`` itself, which keeps the
process group and rebuilds the mesh. Workers registered by modules collected but deselected run too.

A worker that raises on any rank fails the whole spawn, and every test of that world reports the
same traceback (it names the worker): after one rank failed, the others cannot go on with the
next worker's collectives.
"""

from __future__ import annotations

from typing import Any, Callable

from longctx.train import dist

_REGISTERED: dict[int, dict[str, tuple[Callable, tuple, float]]] = {}
_DONE: dict[int, list[dict[str, Any]] | BaseException] = {}


def register(world: int, name: str, fn: Callable, *args: Any, timeout_s: float = 240.0) -> None:
    """Run ``fn(*args)`` on every rank of the shared ``world``-rank spawn; ``fn`` is importable."""
    _REGISTERED.setdefault(world, {})[name] = (fn, args, timeout_s)


def _run_registered(jobs: dict[str, tuple[Callable, tuple, float]]) -> dict[str, Any]:
    return {name: fn(*args) for name, (fn, args, _) in jobs.items()}


def results(world: int, name: str) -> list[Any]:
    """Per-rank return values (rank order) of the worker registered as ``name`` for ``world``."""
    if world not in _DONE:
        jobs = _REGISTERED[world]
        try:
            _DONE[world] = dist.spawn(_run_registered, world, jobs, timeout_s=sum(t for *_, t in jobs.values()))
        except Exception as err:   # every test of this world fails with it, none spawns again
            _DONE[world] = err
    done = _DONE[world]
    if isinstance(done, BaseException):
        raise RuntimeError(f"the shared {world}-rank spawn of {list(_REGISTERED[world])} failed") from done
    return [per_rank[name] for per_rank in done]
