"""The one module that knows about distribution: ranks, env vars, device mesh, process groups.

Everything else asks this module (``dist.current()``, ``dist.sp_group()``, ``dist.print0``).
A single process (no ``torchrun``) takes the same code path: ``current()`` then describes a
world of one, groups are ``None`` and the collectives below are no-ops.

Rank grid. ``init(sp)`` lays the ``world_size`` ranks out as a ``(dp, sp)`` device mesh in
row-major order, so rank ``r`` has ``dp_rank = r // sp`` and ``sp_rank = r % sp``: the ranks of
one sequence-parallel group are consecutive, i.e. on one node whenever ``sp <= gpus per node``
(Ulysses' all-to-all then stays on NVLink). FSDP shards over the flattened ``dp x sp`` mesh.

Launch (every entry point uses this module)::

    torchrun --standalone --nproc-per-node 2 -m longctx.train --params params/demo/03_train.yaml

For tests and benchmarks, :func:`spawn` starts ``n`` local gloo processes running a function.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

__all__ = [
    "DistInfo", "Parallel", "get_dist_info", "device_type", "init", "current", "use", "cleanup",
    "sp_group", "print0", "barrier", "all_reduce", "all_gather", "check_degrees", "spawn",
]


@dataclass(frozen=True)
class DistInfo:
    """What the launcher (torchrun, srun) told this process through env vars."""

    distributed: bool
    rank: int
    local_rank: int
    world_size: int


def get_dist_info() -> DistInfo:
    """Rank and world size from ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (torchrun's contract)."""
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE")):
        return DistInfo(True, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")),
                        int(os.environ["WORLD_SIZE"]))
    return DistInfo(False, 0, 0, 1)


def device_type() -> str:
    """``cuda`` when a GPU is visible, else ``cpu`` (gloo)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_degrees(world_size: int, sp: int) -> None:
    """Fail early, with numbers, when ``sp`` cannot tile ``world_size`` ranks."""
    if sp < 1 or world_size % sp:
        valid = [d for d in range(1, world_size + 1) if world_size % d == 0]
        raise ValueError(f"sp={sp} does not divide world_size={world_size} "
                         f"(dp = world_size / sp must be whole); valid sp: {valid}")


@dataclass
class Parallel:
    """This process's place in the ``(dp, sp)`` grid, and the groups that go with it."""

    info: DistInfo
    device: torch.device
    dp: int
    sp: int
    mesh: Any = None          # DeviceMesh (dp, sp), None for one process
    sp_group: Any = None      # ProcessGroup of this rank's sequence-parallel peers
    dp_group: Any = None      # ProcessGroup of the ranks holding the same sequence shard
    fsdp_mesh: Any = None     # 1-D DeviceMesh over all ranks (FSDP shards parameters over it)

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def dp_rank(self) -> int:
        return self.info.rank // self.sp

    @property
    def sp_rank(self) -> int:
        return self.info.rank % self.sp

    @property
    def is_main(self) -> bool:
        return self.info.rank == 0


_CURRENT: Parallel | None = None


def _single() -> Parallel:
    return Parallel(DistInfo(False, 0, 0, 1), torch.device(device_type()), dp=1, sp=1)


def init(sp: int = 1, backend: str | None = None, timeout_s: float = 1800.0, one_rank_group: bool = False) -> Parallel:
    """Join the process group (if launched distributed), build the ``(dp, sp)`` mesh, make it current.

    ``backend`` defaults to nccl on GPU, gloo on CPU. Re-initialising with another ``sp`` (a new
    training stage on the same processes) keeps the process group and rebuilds the mesh.
    ``one_rank_group``: a single process gets a process group and mesh of its own (an in-memory
    store), so FSDP2 can wrap it: its CPU offload (``offload_params``) on one GPU.
    """
    global _CURRENT
    info = get_dist_info()
    check_degrees(info.world_size, sp)
    kind = device_type()
    if kind == "cuda":
        # before the allocator starts: segments that grow in place instead of 4-8 GiB blocks of varying size
        # that fragment at long context (ALST's setting too); a value set by the user wins
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
    else:
        device = torch.device("cpu")
    if not info.distributed or info.world_size == 1:
        if sp != 1:
            raise ValueError(f"sp={sp} needs {sp} processes; launch with torchrun --nproc-per-node {sp}")
        if not one_rank_group:
            _CURRENT = Parallel(info, device, dp=1, sp=1)
            return _CURRENT
    if not tdist.is_initialized():
        alone = {} if info.distributed else {"store": tdist.HashStore(), "rank": 0, "world_size": 1}
        tdist.init_process_group(backend or ("nccl" if kind == "cuda" else "gloo"),
                                 timeout=datetime.timedelta(seconds=timeout_s),
                                 device_id=device if kind == "cuda" else None, **alone)
    from torch.distributed.device_mesh import init_device_mesh

    dp = info.world_size // sp
    mesh = init_device_mesh(kind, (dp, sp), mesh_dim_names=("dp", "sp"))
    _CURRENT = Parallel(info, device, dp=dp, sp=sp, mesh=mesh, sp_group=mesh.get_group("sp"),
                        dp_group=mesh.get_group("dp"), fsdp_mesh=mesh["dp", "sp"]._flatten("dp_sp"))
    return _CURRENT


def current() -> Parallel:
    """The grid set by :func:`init` (or :func:`use`); a world of one if neither ran."""
    return _CURRENT if _CURRENT is not None else _single()


@contextlib.contextmanager
def use(parallel: Parallel):
    """Make ``parallel`` current inside the block (tests build several grids in one process)."""
    global _CURRENT
    saved, _CURRENT = _CURRENT, parallel
    try:
        yield parallel
    finally:
        _CURRENT = saved


def sp_group():
    """The sequence-parallel group of this rank (``None``: no sequence parallelism)."""
    par = current()
    return par.sp_group if par.sp > 1 else None


def cleanup() -> None:
    """Barrier, then leave the process group (gloo aborts if one rank leaves with work in flight)."""
    global _CURRENT
    if tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()
    _CURRENT = None


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only, flushed (logs of many ranks stay readable)."""
    if get_dist_info().rank == 0:
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if tdist.is_initialized():
        tdist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum", group=None) -> torch.Tensor:
    """In-place all-reduce over ``group`` (default: every rank); no-op for one process."""
    if tdist.is_initialized() and tdist.get_world_size(group) > 1:
        tdist.all_reduce(tensor, op={"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX}[op], group=group)
    return tensor


def all_gather(tensor: torch.Tensor, group=None, dim: int = 0) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank of ``group`` along ``dim`` (no autograd)."""
    if group is None or tdist.get_world_size(group) == 1:
        return tensor
    n = tdist.get_world_size(group)
    x = tensor.movedim(dim, 0).contiguous()
    out = torch.empty((n * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    _gather_into(out, x, group)
    return out.movedim(0, dim)


def _gather_into(out: torch.Tensor, x: torch.Tensor, group, single: bool | None = None) -> None:
    """``out = cat(x of every rank)``: torch >= 2.13's fused ``all_gather_single``, else
    ``all_gather`` into a list of views of ``out``, which every backend of every torch supports
    (pyproject accepts torch 2.6). ``single`` forces a path (tests run both on one torch)."""
    fused = getattr(tdist, "all_gather_single", None)
    if single is None:
        single = fused is not None
    if single:
        fused(out, x, group=group)
        return
    tdist.all_gather(list(out.chunk(tdist.get_world_size(group))), x, group=group)


# --------------------------------------------------------------------------- local launcher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_entry(rank: int, nprocs: int, port: int, threads: int, fn: Callable, args: tuple, queue) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nprocs),
                      LOCAL_WORLD_SIZE=str(nprocs), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    try:
        result = fn(*args)
    except BaseException:  # report and exit hard: a barrier here would wait for the failed peers
        import traceback

        queue.put((rank, None, f"rank {rank}: {traceback.format_exc()}"))
        queue.close()
        queue.join_thread()
        os._exit(1)
    cleanup()
    queue.put((rank, result, None))


def spawn(fn: Callable, nprocs: int, *args: Any, threads: int = 1, timeout_s: float = 300.0) -> list[Any]:
    """Run ``fn(*args)`` in ``nprocs`` fresh local processes wired like ``torchrun`` (gloo on CPU).

    ``fn`` must be importable (module level) and call :func:`init` itself. Returns the per-rank
    return values (picklable), in rank order; raises with the first failing rank's traceback.
    """
    import queue as queue_mod

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_spawn_entry, args=(r, nprocs, port, threads, fn, args, queue), daemon=True)
             for r in range(nprocs)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
    while len(results) + len(errors) < nprocs:
        left = (deadline - datetime.datetime.now()).total_seconds()
        try:
            rank, result, error = queue.get(timeout=min(max(left, 0.1), 2.0))  # poll: a crashed rank reports nothing
        except queue_mod.Empty:
            if left <= 0 or not any(p.is_alive() for p in procs):
                break
            continue
        if error:
            errors.append(error)
            break
        results[rank] = result
    for p in procs:
        p.join(timeout=10 if not errors else 1)
        if p.is_alive():
            p.kill()
    if errors:
        raise RuntimeError(errors[0])
    if len(results) < nprocs:
        codes = [p.exitcode for p in procs]
        raise RuntimeError(f"spawn: only {len(results)}/{nprocs} ranks reported (exit codes {codes})")
    return [results[r] for r in range(nprocs)]
