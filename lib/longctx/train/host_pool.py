"""One host buffer for the offloaded layer checkpoints, exactly their size, pinned once.

Used by :class:`longctx.train.offload.CheckpointStore` (``host_pool: true``); its capacity is the
estimate's ``host_pool_bytes`` (``longctx.train.memory``): the stored layer inputs of the longest
sample, each slice starting on a 512-byte boundary.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass

import torch

from .memory import pool_slice_bytes

__all__ = ["HostPool"]


@dataclass
class HostPool:
    """Host memory of the offloaded layer inputs: one buffer of exactly ``capacity`` bytes,
    allocated at the first offload and kept for the run, cut into consecutive slices in the order
    the layers are packed; the offset rewinds when every slice is released (after backward).

    Why one buffer: torch's caching host allocator pins each tensor in a block of the next power
    of two (above 512K tokens a 4-8 GiB layer input takes an 8 GiB block: the host need nearly
    doubles), and turning its rounding off (``pinned_max_cached_size_mb``) would pin and unpin
    every layer input at every step. This buffer is pageable memory page-locked once with
    ``cudaHostRegister`` (as torch's own checkpoint stager pins its buffers,
    ``torch.distributed.checkpoint._state_dict_stager``): exactly the bytes, pinned once. Without
    CUDA it is a plain CPU buffer, with the same slicing (so it is tested on CPU).
    """

    capacity: int
    buffer: torch.Tensor | None = None
    offset: int = 0
    live: int = 0
    misses: int = 0                # layer inputs that did not fit (taken from torch's allocator instead)

    def take(self, shape: torch.Size, dtype: torch.dtype, pin: bool, allocations) -> torch.Tensor | None:
        """A slice for a tensor of ``shape``/``dtype``, or None when the pool is full."""
        nbytes = math.prod(shape) * dtype.itemsize
        if self.offset + nbytes > self.capacity:
            if not self.misses:
                warnings.warn(f"host pool of {self.capacity} bytes is full: a layer input of {nbytes} bytes goes to "
                              "torch's caching host allocator (a power-of-two block); the plan sized the pool for "
                              "fewer or shorter inputs", RuntimeWarning, stacklevel=2)
            self.misses += 1
            return None
        if self.buffer is None:
            with allocations(exact=True):
                self.buffer = torch.empty(self.capacity, dtype=torch.uint8)
            if pin:
                ptr = self.buffer.data_ptr()
                err = int(torch.cuda.cudart().cudaHostRegister(ptr, self.capacity, 0))
                if err != 0:
                    raise RuntimeError(f"cudaHostRegister of {self.capacity / 2**30:.1f} GiB for the offloaded layer "
                                       f"checkpoints failed (cudaError {err}): is the locked-memory limit "
                                       "(ulimit -l) below it? host_pool: false uses torch's pinned allocator instead")
                weakref.finalize(self, _unregister, self.buffer)
        out = self.buffer[self.offset:self.offset + nbytes].view(dtype).view(shape)
        self.offset += pool_slice_bytes(nbytes)   # slices start on 512-byte boundaries
        self.live += 1
        return out

    def release(self) -> None:
        self.live -= 1
        if self.live == 0:
            self.offset = 0


def _unregister(buffer: torch.Tensor) -> None:
    torch.cuda.cudart().cudaHostUnregister(buffer.data_ptr())
