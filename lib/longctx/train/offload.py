"""Activation checkpoints per decoder layer, the chosen ones kept in (pinned) host memory.

With activation checkpointing a decoder layer keeps one tensor from its forward to its
backward: its input, ``tokens x hidden`` in the compute dtype (Llama-3.1-8B in bf16: 8 KB per
token per layer, 256 KB per token for its 32 layers; 128 GiB at 512K tokens). Everything else
the layer needs is recomputed in backward.

:func:`checkpoint_layers` wraps each layer with torch's non-reentrant checkpoint
(``checkpoint_wrapper``, so parameter names and FSDP wrapping are unchanged). The checkpoint
saves the layer's positional inputs (``hidden_states``) through ``saved_tensors_hooks``; around
it a :class:`CheckpointStore` installs its own pack/unpack pair, which

* keeps the input where it is for layers on the device, and moves it to host memory for the
  offloaded ones (into a slice of the store's one host buffer, :mod:`longctx.train.host_pool`,
  or else a block of torch's pinned allocator): on CUDA on a side stream (the copy overlaps the next
  layer's forward; ``record_stream`` keeps the source alive until the copy is done), and back in
  backward, prefetching the previous offloaded layer's input while this one is recomputed;
  without CUDA into a separate CPU tensor (the same logic, so it is tested on CPU);
* counts the bytes it holds on each side while the autograd graph holds them (a finaliser
  subtracts them when the graph frees them), so the accounting shows what stays on the device.

Why not ``torch.autograd.graph.save_on_cpu``: it moves every saved tensor of its region, copies
synchronously, and has no prefetch; we offload one tensor per chosen layer, asynchronously. The
layers offloaded are the first ``n`` (their inputs come back last in backward, so the prefetch
has the most time); the number comes from the memory estimate (``longctx.train.memory``),
which keeps as many layers on the device as fit.

Checkpoint stride (``checkpoint_stride``): of the offloaded layers only every ``s``-th (layers
0, s, 2s, ...) stores its input; the input of a skipped layer ``i`` is recomputed in backward,
when layer ``i``'s own recompute asks for it, by running layer ``i-1`` once more from its input
(itself restored, or recomputed the same way). That rerun sees what the first forward saw: the
same grad mode, autocast state and RNG state, so the same kernels and a bitwise equal output, but
saves nothing (a pack hook that discards). The device copy it starts from stays on its record
for layer ``i-1``'s own backward, which comes next, so nothing is copied twice. Host memory:
``ceil(n / s)`` checkpoints instead of ``n``; device: at the top of a group of ``s`` layers
``s`` layer inputs at once (``2`` without skipping: restored + prefetched); compute: one more
layer forward per skipped layer (stride 2: about +12 % of a step). Under FSDP2 the layer rerun
is the inner module, below its FSDP unit (``fully_shard`` wraps the checkpoint wrapper): the
unit is unsharded explicitly first (a no-op when backward prefetch has done it; its own backward
reshards it), and every rank reruns at the same point, so sequence-parallel all-to-alls pair up.
Why not nest two layers in one checkpoint: its recompute would save both layers' activations
at once (twice the working set), or, nested, rerun every layer once more, not every other.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .host_pool import HostPool

__all__ = ["CheckpointStore", "HostPool", "checkpoint_layers", "offloaded_layers", "skipped_layers", "attach"]


@dataclass
class _Call:
    """How a layer ran in forward, less its input: what the next (skipped) layer's input is
    recomputed with. Held by the record of that input, never the input itself."""

    module: nn.Module
    args: tuple                  # positional arguments after the input
    kwargs: dict
    owner: object                # weakref to the layer's wrapper (FSDP2's unit) or None
    grad_enabled: bool
    autocast: list               # (device type, autocast kwargs) in force at the forward
    cpu_rng: torch.Tensor
    device_rng: object           # (device index, CUDA RNG state) or None
    output: object = None        # weakref to the layer's output (the skipped layer's input)


@dataclass
class _Kept:
    """A layer input left on its device (a holder, so its release can be counted)."""

    tensor: torch.Tensor
    call: _Call | None = None


@dataclass
class _Offloaded:
    """A layer input copied to host memory, and its way back."""

    host: torch.Tensor
    device: torch.device
    before: object                              # weakref to the input offloaded just before, or None
    copied: object = None                       # CUDA event: the host copy is complete
    back: torch.Tensor | None = None            # prefetched device copy
    back_ready: object = None                   # CUDA event: ``back`` is complete
    restored: bool = False
    call: _Call | None = None


@dataclass
class _Skipped:
    """A layer input not stored: recomputed in backward by running the previous layer again."""

    source: object                              # the previous layer's input record (with its _Call)
    back: torch.Tensor | None = None            # recomputed for a later skipped layer, kept for this one
    restored: bool = False
    call: _Call | None = None


def _untracked(exact: bool = False):
    """Default context of host allocations (``longctx.train.memtrack`` counts them inside its own)."""
    return contextlib.nullcontext()


def _discard(tensor: torch.Tensor) -> None:
    return None


def _never(packed) -> torch.Tensor:
    raise RuntimeError("a layer rerun to recompute the next layer's input has no backward")


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a.is_set_to(b)`` (same storage, offset, shape and strides), also for fake tensors (where
    ``is_set_to`` is always False)."""
    return (a.untyped_storage()._cdata == b.untyped_storage()._cdata and a.storage_offset() == b.storage_offset()
            and a.shape == b.shape and a.stride() == b.stride())


def _output_tensor(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class CheckpointStore:
    """Pack/unpack hooks for checkpointed layer inputs, with byte counts.

    ``device_bytes`` / ``host_bytes``: bytes of layer inputs the autograd graph holds now;
    ``peak_*``: their maxima since :meth:`reset_peaks`; ``prefetched``: restores that found
    their tensor already on its way back (or restored for a skipped layer's rerun);
    ``skipped``: layer inputs not stored; ``recomputed``: layer reruns that recomputed them.
    """

    device_bytes: int = 0
    host_bytes: int = 0
    peak_device_bytes: int = 0
    peak_host_bytes: int = 0
    offloaded: int = 0
    prefetched: int = 0
    skipped: int = 0
    recomputed: int = 0
    _last: object = None                           # weakref to the latest _Offloaded
    _previous: object = None                       # weakref to the latest record with a _Call
    _streams: dict = field(default_factory=dict)   # device -> side stream for copies
    pool: HostPool | None = None                   # one exactly sized host buffer for the offloaded inputs
    host_allocations: object = _untracked          # context of host-copy allocations (memtrack counts them)

    def reset_peaks(self) -> None:
        self.peak_device_bytes, self.peak_host_bytes = self.device_bytes, self.host_bytes

    def _add(self, holder: object, nbytes: int, on_host: bool) -> None:
        if on_host:
            self.host_bytes += nbytes
            self.peak_host_bytes = max(self.peak_host_bytes, self.host_bytes)
        else:
            self.device_bytes += nbytes
            self.peak_device_bytes = max(self.peak_device_bytes, self.device_bytes)
        weakref.finalize(holder, self._release, nbytes, on_host)

    def _release(self, nbytes: int, on_host: bool) -> None:
        if on_host:
            self.host_bytes -= nbytes
        else:
            self.device_bytes -= nbytes

    def _stream(self, device: torch.device):
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return self._streams[device]

    # ---------------------------------------------------------------- hooks

    def pack(self, tensor: torch.Tensor, offload: bool, skip: bool = False, packed: list | None = None):
        record = self._pack(tensor, offload, skip)
        if packed is not None:
            packed.append(record)
        return record

    def _pack(self, tensor: torch.Tensor, offload: bool, skip: bool):
        if skip:
            source = self._previous() if self._previous is not None else None
            made = source.call.output() if source is not None and source.call.output is not None else None
            if made is None or not _same_memory(made, tensor):   # FSDP2's pre-forward passes a view of it
                raise RuntimeError("checkpoint_stride: a skipped layer's input must be the output of the layer "
                                   "checkpointed just before it (layers run in order, one forward at a time)")
            self.skipped += 1
            return _Skipped(source)
        nbytes = tensor.numel() * tensor.element_size()
        if not offload:
            holder = _Kept(tensor)
            self._add(holder, nbytes, on_host=False)
            return holder
        pooled = self.pool.take(tensor.shape, tensor.dtype, tensor.is_cuda, self.host_allocations) if self.pool else None
        host = pooled
        if host is None:
            with self.host_allocations():      # torch's caching host allocator: a power-of-two block when pinned
                host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda)
        if tensor.is_cuda:
            side = self._stream(tensor.device)
            side.wait_stream(torch.cuda.current_stream(tensor.device))   # the tensor is written
            with torch.cuda.stream(side):
                host.copy_(tensor.detach(), non_blocking=True)
                copied = side.record_event()
            tensor.record_stream(side)          # its memory is not reused before the copy ends
        else:                                   # no CUDA: a separate CPU copy stands in for pinned memory
            host.copy_(tensor.detach())
            copied = None
        record = _Offloaded(host, tensor.device, self._last, copied)
        self._last = weakref.ref(record)
        self.offloaded += 1
        self._add(record, nbytes, on_host=True)
        if pooled is not None:                  # its slice is free again when the graph drops the record
            weakref.finalize(record, self.pool.release)
        return record

    def _start_restore(self, record: _Offloaded) -> None:
        if record.back is not None:
            return
        if record.device.type == "cuda":
            side = self._stream(record.device)
            side.wait_stream(torch.cuda.current_stream(record.device))
            with torch.cuda.stream(side):
                record.back = record.host.to(record.device, non_blocking=True)
                record.back_ready = side.record_event()
        else:
            record.back = record.host.clone()

    def _usable(self, record: _Offloaded) -> torch.Tensor:
        """``record.back`` made safe to use on the current stream."""
        out = record.back
        if record.device.type == "cuda":
            current = torch.cuda.current_stream(record.device)
            current.wait_event(record.back_ready)
            out.record_stream(current)          # allocated on the side stream, used on this one
        return out

    def unpack(self, packed):
        if isinstance(packed, _Kept):
            return packed.tensor
        if isinstance(packed, _Skipped):
            if packed.back is not None:
                self.prefetched += 1
            out = packed.back if packed.back is not None else self._recompute(packed)
            packed.back, packed.restored = None, True
            return out
        if packed.back is not None:
            self.prefetched += 1
        self._start_restore(packed)
        out = self._usable(packed)
        packed.back, packed.restored = None, True
        before = packed.before() if packed.before is not None else None
        if before is not None and not before.restored:   # backward walks layers in reverse
            self._start_restore(before)
        return out

    def _kept_on_device(self, record) -> torch.Tensor:
        """The layer input of ``record`` on its device for a later layer's rerun, left on the
        record for its own unpack (which follows)."""
        if isinstance(record, _Kept):
            return record.tensor
        if isinstance(record, _Skipped):
            if record.back is None:
                record.back = self._recompute(record)
            return record.back
        self._start_restore(record)
        return self._usable(record)

    def _recompute(self, skipped: _Skipped) -> torch.Tensor:
        """The skipped layer's input: the previous layer run again on its own input, as in forward,
        saving nothing."""
        call = skipped.source.call
        x = self._kept_on_device(skipped.source)
        owner = call.owner() if call.owner is not None else None
        unshard = getattr(owner, "unshard", None)   # FSDP2's unit: gather the layer (no-op if prefetched)
        if unshard is not None:
            unshard()
        cuda = [call.device_rng[0]] if call.device_rng is not None else []
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=cuda, device_type="cuda"))
            torch.set_rng_state(call.cpu_rng)
            if call.device_rng is not None:
                torch.cuda.set_rng_state(call.device_rng[1], call.device_rng[0])
            for device_type, kwargs in call.autocast:
                stack.enter_context(torch.amp.autocast(device_type, **kwargs))
            stack.enter_context(torch.set_grad_enabled(call.grad_enabled))   # the same kernels as the forward
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(_discard, _never))
            out = _output_tensor(call.module(x, *call.args, **call.kwargs))
        self.recomputed += 1
        return out.detach()

    def _call(self, module: nn.Module, args: tuple, kwargs: dict, owner) -> _Call:
        device = args[0].device
        autocast = [(t, {"enabled": torch.is_autocast_enabled(t), "dtype": torch.get_autocast_dtype(t),
                         "cache_enabled": torch.is_autocast_cache_enabled()})
                    for t in dict.fromkeys((device.type, "cpu")) if torch.amp.is_autocast_available(t)]
        device_rng = None
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            device_rng = (index, torch.cuda.get_rng_state(index))
        return _Call(module, args[1:], kwargs, owner, torch.is_grad_enabled(), autocast, torch.get_rng_state(),
                     device_rng)

    def checkpoint_fn(self, module: nn.Module, *args, offload: bool = False, skip: bool = False,
                      source: bool = False, owner=None, **kwargs):
        """``checkpoint_wrapper``'s ``checkpoint_fn``: non-reentrant checkpoint of ``module``, whose
        saved positional inputs go through this store. ``skip``: store no input (it is recomputed
        from the previous layer's); ``source``: the next layer skips, so keep how this one ran."""
        call = self._call(module, args, kwargs, owner) if source and torch.is_grad_enabled() else None
        packed = []
        pack = functools.partial(self.pack, offload=offload, skip=skip, packed=packed)
        with torch.autograd.graph.saved_tensors_hooks(pack, self.unpack):
            out = checkpoint(module, *args, use_reentrant=False, **kwargs)
        if call is not None:
            if not packed:
                raise RuntimeError("checkpoint_stride: the layer before a skipped one saved no input")
            call.output = weakref.ref(_output_tensor(out))
            packed[0].call = call              # the record of args[0], the hidden states
            self._previous = weakref.ref(packed[0])
        return out


def offloaded_layers(n_layers: int, n_offloaded: int) -> list[bool]:
    """Which layers' inputs go to host memory: the first ``n_offloaded`` (see the module doc)."""
    if not 0 <= n_offloaded <= n_layers:
        raise ValueError(f"cannot offload {n_offloaded} of {n_layers} layers")
    return [i < n_offloaded for i in range(n_layers)]


def skipped_layers(n_layers: int, n_offloaded: int, stride: int = 1) -> list[bool]:
    """Which layers store no input (recomputed from the previous layer's in backward): of the
    first ``n_offloaded``, all but every ``stride``-th (layers 0, stride, 2 stride, ... store)."""
    if stride < 1:
        raise ValueError(f"checkpoint stride must be >= 1, got {stride}")
    return [off and i % stride != 0 for i, off in enumerate(offloaded_layers(n_layers, n_offloaded))]


def attach(wrappers: list[nn.Module], store: CheckpointStore, n_offloaded: int = 0, stride: int = 1) -> None:
    """Point each checkpoint wrapper of ``wrappers`` (one per decoder layer, in order) at ``store``,
    the inputs of the first ``n_offloaded`` in host memory, every ``stride``-th of them stored."""
    offload = offloaded_layers(len(wrappers), n_offloaded)
    skip = skipped_layers(len(wrappers), n_offloaded, stride)
    for i, wrapper in enumerate(wrappers):
        wrapper.checkpoint_fn = functools.partial(store.checkpoint_fn, offload=offload[i], skip=skip[i],
                                                  source=i + 1 < len(wrappers) and skip[i + 1],
                                                  owner=weakref.ref(wrapper))


def checkpoint_layers(layers: nn.ModuleList, n_offloaded: int = 0, store: CheckpointStore | None = None,
                      stride: int = 1) -> CheckpointStore:
    """Wrap each of ``layers`` in place with activation checkpointing, the inputs of the first
    ``n_offloaded`` kept in host memory (every ``stride``-th of them: the others are recomputed);
    returns the store that holds and counts them."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    store = store if store is not None else CheckpointStore()
    for i in range(len(layers)):
        layers[i] = checkpoint_wrapper(layers[i])
    attach(list(layers), store, n_offloaded, stride)
    return store
