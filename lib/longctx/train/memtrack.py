"""Peak memory of a training step measured on fake tensors: the real 8B shape, on a CPU, in seconds.

:func:`track` runs a callable (one forward + backward) under ``FakeTensorMode`` (tensors with
shapes, dtypes and storages but no data) and a ``TorchDispatchMode`` that registers the storage
of every tensor an operation returns. A storage counts from its creation until Python and
autograd drop it, at its current size (a storage resized in place, as FSDP2 frees and re-gathers
its parameters, is re-read when it is an op's output again and at every sweep) (a weak reference to the storage: a view keeps it alive, as on the GPU). The
peak is exact for this bookkeeping: the running total only over-counts storages already freed,
so whenever it would pass the peak the registry is swept and the true total taken. That peak is
what ``torch.cuda.max_memory_allocated`` would show less the allocator's rounding (blocks above
1 MiB are rounded to 2 MiB, 512 B below), fragmentation, the CUDA context and cuBLAS workspaces.

What the fake run cannot do, and how it stands in:

* attention: :func:`flash_shaped_attention` replaces ``F.scaled_dot_product_attention`` with an
  autograd function with flash-attention 2's allocations: forward returns ``out`` and saves q, k,
  v, out and the fp32 log-sum-exp; backward allocates dq/dk/dv, FA2's fp32 ``dq_accum`` and
  ``softmax_d`` and, for grouped-query attention, dk/dv expanded to all query heads. No ``S x S``
  tensor exists (SDPA's math kernel on CPU would build one).
* data-dependent answers (how many documents, which tokens carry answers) come from the real
  inputs: one document per sample, and the answer rows of the real labels
  (:func:`longctx.train.loss.answer_rows`).
* FSDP2's CPU offload (``offload_params``) runs for real on a one-rank ``fake`` process group:
  its sharded parameters, and each gradient once FSDP has assigned it to a shard, count as host
  memory; the gathered layers, unsharded gradients and reduce-scatter buffers as device memory.
* the device is a fake CPU (autograd on fake CUDA tensors aborts in a CPU-only torch build), so
  the layer inputs :mod:`longctx.train.offload` moves to host memory are told apart by the store:
  they count as host bytes, rounded as torch's caching host allocator pins them (the next power
  of two, :func:`pinned_bytes`), or at their size when they are slices of the store's one host
  pool (:class:`longctx.train.host_pool.HostPool`, registered as one exact buffer).

Why hand-written rather than ``torch.distributed._tools.mem_tracker.MemTracker``: that tracker
attributes memory per device and per module, but here host and device are the same fake device
and the split that matters is the offload store's; the bookkeeping is 60 lines.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["Tracker", "TrackResult", "track", "flash_shaped_attention", "pinned_bytes", "fake_mode"]

GIB = 2**30


def pinned_bytes(nbytes: int) -> int:
    """Bytes torch's caching host allocator pins for a block of ``nbytes``: the next power of two
    (``CachingHostAllocator``, ``c10::llvm::PowerOf2Ceil``; no rounding limit by default)."""
    return 0 if nbytes <= 0 else 1 << (int(nbytes) - 1).bit_length()


def _key(storage) -> int:
    return storage._cdata


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2's sharded parameters and gradients), else ``t``."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t


@dataclass
class TrackResult:
    """Bytes at the peak (device), split by what the storage belongs to, and host bytes."""

    peak: int = 0                # live device bytes at the peak
    weights: int = 0             # of which parameters (and buffers)
    grads: int = 0               # of which parameter gradients
    where: str = ""              # the operation that reached the peak
    host: int = 0                # tensor bytes in host memory at the host peak
    host_pinned: int = 0         # the same, as the caching host allocator pins them
    ops: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def activations(self) -> int:
        return self.peak - self.weights - self.grads

    def gib(self) -> dict:
        return {"peak_gib": self.peak / GIB, "weights_gib": self.weights / GIB, "grads_gib": self.grads / GIB,
                "act_gib": self.activations / GIB, "host_gib": self.host / GIB,
                "host_pinned_gib": self.host_pinned / GIB, "where": self.where}


class Tracker(TorchDispatchMode):
    """Live storage bytes, device and host, with the peak and its composition."""

    def __init__(self, params: list[torch.Tensor] = (), host_params: list[torch.Tensor] = ()):
        super().__init__()
        self.live: dict[int, tuple[object, int]] = {}    # storage key -> (weak ref, bytes)
        self.host_keys: set[int] = set()
        self.exact_keys: set[int] = set()            # host storages pinned at their size
        self.total = 0
        self.result = TrackResult()
        self.params = list(params)
        self.param_keys = set()
        self.host_params: list[torch.Tensor] = []
        for p in self.params:
            self.register(p)
            self.param_keys.add(_key(p.untyped_storage()))
        self.host_params = list(host_params)     # DTensors: their .grad is the gradient FSDP assigns
        with self.host_allocations():
            for p in self.host_params:
                self.register(_local(p))

    @contextlib.contextmanager
    def host_allocations(self, exact: bool = False):
        """Storages created inside count as host memory (the offload store's copies); ``exact``:
        pinned at their size (the store's one host pool, ``cudaHostRegister``), not rounded up as
        torch's caching host allocator rounds its blocks."""
        self.on_host, self.exact = True, exact
        try:
            yield
        finally:
            self.on_host, self.exact = False, False

    on_host = exact = False

    def register(self, t: torch.Tensor) -> None:
        s = t.untyped_storage()
        k = _key(s)
        if k in self.live:          # a storage resized in place (FSDP2 frees and re-allocates its gathered
            ref, n = self.live[k]   # parameters so), seen again as an op's output
            if s.nbytes() != n:
                self.live[k] = (ref, s.nbytes())
                if k not in self.host_keys:
                    self.total += s.nbytes() - n
                    if self.total > self.result.peak:
                        self._sweep()
            return
        if self.on_host:
            self.host_keys.add(k)
            if self.exact:
                self.exact_keys.add(k)
        from torch.multiprocessing.reductions import StorageWeakRef

        self.live[k] = (StorageWeakRef(s), s.nbytes())
        if k not in self.host_keys:
            self.total += s.nbytes()
            if self.total > self.result.peak:
                self._sweep()

    def _sweep(self) -> None:
        for p in self.host_params:   # a gradient FSDP's CPU offload has copied to host memory
            k = _key(_local(p.grad).untyped_storage()) if p.grad is not None else None
            if k in self.live and k not in self.host_keys:
                self.host_keys.add(k)
                self.total -= self.live[k][1]
        dead = [k for k, (ref, _) in self.live.items() if ref.expired()]
        for k in dead:
            _, n = self.live.pop(k)
            if k not in self.host_keys:
                self.total -= n
            self.host_keys.discard(k)
            self.exact_keys.discard(k)
        for k, (ref, n) in self.live.items():   # storages resized in place since (FSDP2's resize_(0) frees)
            now = torch.UntypedStorage._new_with_weak_ptr(ref.cdata).nbytes()
            if now != n:
                self.live[k] = (ref, now)
                if k not in self.host_keys:
                    self.total += now - n
        host = sum(self.live[k][1] for k in self.host_keys)
        if host > self.result.host:
            self.result.host = host
            self.result.host_pinned = sum(self.live[k][1] if k in self.exact_keys else pinned_bytes(self.live[k][1])
                                          for k in self.host_keys)
        if self.total > self.result.peak:
            r = self.result
            r.peak, r.where = self.total, self._op
            r.weights = sum(self.live[k][1] for k in self.param_keys if k in self.live)
            r.grads = sum(p.grad.untyped_storage().nbytes() for p in self.params if p.grad is not None
                          and _key(p.grad.untyped_storage()) in self.live)

    _op = "start"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._op = str(func.overloadpacket.__name__)
        self.result.ops += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.register(t)
        return out

    def finish(self) -> TrackResult:
        self._op = "end"
        self._sweep()
        return self.result


# --------------------------------------------------------------------------- attention with FA2's allocations


class _FlashShaped(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        b, hq, s, d = q.shape
        out = torch.empty(b, s, hq, d, dtype=q.dtype, device=q.device).transpose(1, 2)   # FA2 writes [B, S, H, D]
        lse = torch.empty(b, hq, s, dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        b, hq, s, d = q.shape
        hk = k.shape[1]
        # flash_attn's _flash_attn_backward allocates dq/dk/dv, then mha_bwd its workspace: fp32
        # softmax_d and dq_accum and, for GQA, dk/dv over all query heads, summed into dk/dv at the end
        dq = torch.empty(b, s, hq, d, dtype=q.dtype, device=q.device)
        dk = torch.empty(b, s, hk, d, dtype=k.dtype, device=q.device)
        dv = torch.empty(b, s, hk, d, dtype=v.dtype, device=q.device)
        softmax_d = torch.empty(b, hq, s, dtype=torch.float32, device=q.device)
        dq_accum = torch.empty(b, s, hq, d, dtype=torch.float32, device=q.device)
        if hk != hq:
            dk_full = torch.empty(b, s, hq, d, dtype=q.dtype, device=q.device)
            dv_full = torch.empty(b, s, hq, d, dtype=q.dtype, device=q.device)
            torch.sum(dk_full.view(b, s, hk, hq // hk, d), 3, out=dk)
            torch.sum(dv_full.view(b, s, hk, hq // hk, d), 3, out=dv)
            del dk_full, dv_full
        del dq_accum, softmax_d
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


def flash_shaped_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention``'s signature, flash-attention 2's memory (values undefined:
    for fake tensors only)."""
    if attn_mask is not None:
        raise ValueError("the fake-tensor attention stands in for causal attention over one document")
    return _FlashShaped.apply(q, k, v)


# --------------------------------------------------------------------------- running a step


def fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


@contextlib.contextmanager
def _stand_ins(answer_rows):
    """Flash-shaped attention, one document per sample, the answer rows of the real labels."""
    import transformers.masking_utils as mu

    from . import loss, ulysses

    saved = (F.scaled_dot_product_attention, ulysses._Documents.get, mu.find_packed_sequence_indices, loss.answer_rows)
    F.scaled_dot_product_attention = flash_shaped_attention
    ulysses._Documents.get = classmethod(lambda cls, position_ids, group, sp: None)
    mu.find_packed_sequence_indices = lambda position_ids: None
    if answer_rows is not None:
        loss.answer_rows = answer_rows
    try:
        yield
    finally:
        F.scaled_dot_product_attention, get, mu.find_packed_sequence_indices, loss.answer_rows = saved
        ulysses._Documents.get = get


def track(step, params, answer_rows=None, stores=(), host_params=()) -> TrackResult:
    """Run ``step()`` (under an active ``FakeTensorMode``) with the tracker on; ``params`` are the
    model's fake parameters, ``answer_rows(labels)`` returns the answer rows as a fake tensor,
    ``stores``: :class:`longctx.train.offload.CheckpointStore` s whose host copies count as host;
    ``host_params``: parameters in host memory (FSDP2's CPU offload: their shards, and their
    gradients once FSDP has assigned them, count as host)."""
    tracker = Tracker(params, host_params)
    before = [store.host_allocations for store in stores]
    for store in stores:
        store.host_allocations = tracker.host_allocations
    t0 = time.perf_counter()
    try:
        with _stand_ins(answer_rows), tracker:
            step()
    finally:
        for store, allocations in zip(stores, before):
            store.host_allocations = allocations
    result = tracker.finish()
    result.seconds = time.perf_counter() - t0
    return result
