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
  offloaded ones: on CUDA into a pinned buffer on a side stream (the copy overlaps the next
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
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["CheckpointStore", "checkpoint_layers", "offloaded_layers"]


@dataclass
class _Kept:
    """A layer input left on its device (a holder, so its release can be counted)."""

    tensor: torch.Tensor


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


@dataclass
class CheckpointStore:
    """Pack/unpack hooks for checkpointed layer inputs, with byte counts.

    ``device_bytes`` / ``host_bytes``: bytes of layer inputs the autograd graph holds now;
    ``peak_*``: their maxima since :meth:`reset_peaks`; ``prefetched``: restores that found
    their tensor already on its way back.
    """

    device_bytes: int = 0
    host_bytes: int = 0
    peak_device_bytes: int = 0
    peak_host_bytes: int = 0
    offloaded: int = 0
    prefetched: int = 0
    _last: object = None                           # weakref to the latest _Offloaded
    _streams: dict = field(default_factory=dict)   # device -> side stream for copies
    host_allocations: object = contextlib.nullcontext   # context of host-copy allocations (memtrack counts them)

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

    def pack(self, tensor: torch.Tensor, offload: bool):
        nbytes = tensor.numel() * tensor.element_size()
        if not offload:
            holder = _Kept(tensor)
            self._add(holder, nbytes, on_host=False)
            return holder
        if tensor.is_cuda:
            with self.host_allocations():
                host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)  # torch caches pinned blocks
            side = self._stream(tensor.device)
            side.wait_stream(torch.cuda.current_stream(tensor.device))   # the tensor is written
            with torch.cuda.stream(side):
                host.copy_(tensor.detach(), non_blocking=True)
                copied = side.record_event()
            tensor.record_stream(side)          # its memory is not reused before the copy ends
        else:                                   # no CUDA: a separate CPU copy stands in for pinned memory
            with self.host_allocations():
                host, copied = tensor.detach().clone(), None
        record = _Offloaded(host, tensor.device, self._last, copied)
        self._last = weakref.ref(record)
        self.offloaded += 1
        self._add(record, nbytes, on_host=True)
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

    def unpack(self, packed):
        if isinstance(packed, _Kept):
            return packed.tensor
        if packed.back is not None:
            self.prefetched += 1
        self._start_restore(packed)
        out, packed.back, packed.restored = packed.back, None, True
        if packed.device.type == "cuda":
            current = torch.cuda.current_stream(packed.device)
            current.wait_event(packed.back_ready)
            out.record_stream(current)          # allocated on the side stream, used on this one
        before = packed.before() if packed.before is not None else None
        if before is not None and not before.restored:   # backward walks layers in reverse
            self._start_restore(before)
        return out

    def checkpoint_fn(self, module: nn.Module, *args, offload: bool = False, **kwargs):
        """``checkpoint_wrapper``'s ``checkpoint_fn``: non-reentrant checkpoint of ``module``, whose
        saved positional inputs go through this store."""
        with torch.autograd.graph.saved_tensors_hooks(functools.partial(self.pack, offload=offload), self.unpack):
            return checkpoint(module, *args, use_reentrant=False, **kwargs)


def offloaded_layers(n_layers: int, n_offloaded: int) -> list[bool]:
    """Which layers' inputs go to host memory: the first ``n_offloaded`` (see the module doc)."""
    if not 0 <= n_offloaded <= n_layers:
        raise ValueError(f"cannot offload {n_offloaded} of {n_layers} layers")
    return [i < n_offloaded for i in range(n_layers)]


def checkpoint_layers(layers: nn.ModuleList, n_offloaded: int = 0, store: CheckpointStore | None = None) -> CheckpointStore:
    """Wrap each of ``layers`` in place with activation checkpointing, the inputs of the first
    ``n_offloaded`` kept in host memory; returns the store that holds and counts them."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    store = store if store is not None else CheckpointStore()
    for i, offload in enumerate(offloaded_layers(len(layers), n_offloaded)):
        layers[i] = checkpoint_wrapper(layers[i], checkpoint_fn=store.checkpoint_fn, offload=offload)
    return store
