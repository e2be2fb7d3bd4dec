"""Tiled MLP: a decoder layer's MLP runs over sequence tiles, each recomputed in backward.

A Llama MLP holds ``tokens x intermediate`` tensors (gate, up, their product and, in backward,
their gradients): for Llama-3.1-8B in bf16 about 170 KB per token, 84 GiB at 512K tokens, more
than all layer checkpoints together. The MLP acts on each token alone, so it can run on
``tile_tokens`` tokens at a time: forward computes the tiles one after another and keeps only
each tile's input (a view of the layer's normalised hidden states), and backward recomputes one
tile at a time, so the MLP's working set is ``O(tile_tokens x intermediate)``. Gradients equal
the untiled ones up to the order of floating-point sums over tiles.

This is ALST's ``TiledMLP`` (DeepSpeed ``runtime/sequence_parallel/ulysses_sp.py``) built from
torch's own pieces: ``checkpoint_wrapper`` (parameter names, state dicts and FSDP wrapping stay
those of the plain model) whose checkpoint function cuts the input with ``split`` and runs a
non-reentrant ``torch.utils.checkpoint`` per tile; it nests inside the layer's own checkpoint.
Every rank of a sequence-parallel group has the same tile count (shards have equal lengths).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["tiled_forward", "tile_mlps"]


def tiled_forward(module: nn.Module, x: torch.Tensor, *, tile_tokens: int) -> torch.Tensor:
    """``module(x)`` computed ``tile_tokens`` positions (dimension -2) at a time."""
    if x.shape[-2] <= tile_tokens:
        return checkpoint(module, x, use_reentrant=False) if torch.is_grad_enabled() else module(x)
    tiles = x.split(tile_tokens, dim=-2)                 # one SplitBackward: tile gradients join once
    if torch.is_grad_enabled():
        outs = [checkpoint(module, tile, use_reentrant=False) for tile in tiles]
    else:
        outs = [module(tile) for tile in tiles]
    return torch.cat(outs, dim=-2)


def tile_mlps(layers: nn.ModuleList, tile_tokens: int, attribute: str = "mlp") -> None:
    """Make the ``attribute`` sub-module of each of ``layers`` tiled, in place."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    if tile_tokens < 1:
        raise ValueError(f"tile_tokens must be >= 1, got {tile_tokens}")
    for layer in layers:
        setattr(layer, attribute, checkpoint_wrapper(getattr(layer, attribute), checkpoint_fn=tiled_forward,
                                                     tile_tokens=tile_tokens))
