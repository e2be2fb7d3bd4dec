"""Sequence-tiled RMSNorm: transformers' ``LlamaRMSNorm`` without its fp32 ``tokens x hidden`` tensors.

The eager ``LlamaRMSNorm`` (``x.to(float32)``, ``pow(2).mean(-1)``, ``rsqrt``, two ``mul``, cast
back, ``weight *``) is the largest memory term of long-context training on one GPU: its autograd
graph saves two fp32 ``tokens x hidden`` copies and its backward materialises five more (at 512K
tokens of Llama-3.1-8B: 56 GiB; ``longctx.train.memtrack`` measures it). :class:`TiledRMSNorm`
computes the same function ``tile_tokens`` positions at a time inside one autograd function: it
saves only the input (usually alive anyway: the residual stream) and the fp32 reciprocal RMS per
token (4 bytes per token), and its backward recomputes each tile's normalised values and writes
the input gradient tile by tile into one output buffer. The fp32 temporaries are then
``O(tile_tokens x hidden)``. Forward values are bit-identical to the eager module (the same
operations in the same order per token); gradients equal autograd's up to the order of
floating-point sums (checked in ``tests/test_tiled_norm.py``: fp64 <= 1e-12, fp32 <= 1e-6).

Hand-written because the field's fused kernels (Liger's ``LigerRMSNorm``, flash-attn's
``rms_norm``, apex's ``FusedRMSNorm``) are Triton/CUDA only: this one runs on CPU (tests, gloo
runs) and on any GPU, with the same memory bound. :func:`tile_norms` switches every RMSNorm of a
model (each decoder layer's two and the final one) in place: parameter names, state dicts and
FSDP wrapping stay those of the plain model.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["rms_norm_tiled", "tile_norms", "TILE_TOKENS"]

TILE_TOKENS = 8192


class _TiledRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, tile: int):
        flat = x.reshape(-1, x.shape[-1])
        out_dtype = torch.promote_types(weight.dtype, x.dtype)
        out = torch.empty(flat.shape, dtype=out_dtype, device=x.device)
        rstd = torch.empty(flat.shape[0], 1, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype,
                           device=x.device)
        for s in range(0, flat.shape[0], tile):
            h = flat[s:s + tile].to(torch.float32) if x.dtype != torch.float64 else flat[s:s + tile]
            r = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
            rstd[s:s + tile] = r
            torch.mul(weight, (h * r).to(x.dtype), out=out[s:s + tile])
        ctx.save_for_backward(x, weight, rstd)
        ctx.tile = tile
        return out.view(*x.shape[:-1], x.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        flat, g = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
        work = torch.float32 if x.dtype != torch.float64 else x.dtype
        dx = torch.empty_like(flat) if ctx.needs_input_grad[0] else None
        dw = torch.zeros(weight.shape, dtype=torch.promote_types(work, weight.dtype), device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for s in range(0, flat.shape[0], ctx.tile):
            h, r, gt = flat[s:s + ctx.tile].to(work), rstd[s:s + ctx.tile], g[s:s + ctx.tile]
            n = h * r
            if dw is not None:
                dw += (gt * n.to(x.dtype)).sum(0, dtype=dw.dtype)
            if dx is not None:
                dn = (gt * weight).to(work)
                dx[s:s + ctx.tile] = r * (dn - n * (dn * n).mean(-1, keepdim=True))
        dx = dx.view(x.shape) if dx is not None else None
        return dx, (dw.to(weight.dtype) if dw is not None else None), None, None


def rms_norm_tiled(x: torch.Tensor, weight: torch.Tensor, eps: float, tile_tokens: int = TILE_TOKENS) -> torch.Tensor:
    """``weight * (x / rms(x))`` as transformers' ``LlamaRMSNorm`` computes it (fp32 inside, the
    normalised values cast to ``x``'s dtype before the weight), ``tile_tokens`` tokens at a time."""
    if tile_tokens < 1:
        raise ValueError(f"tile_tokens must be >= 1, got {tile_tokens}")
    return _TiledRMSNorm.apply(x, weight, float(eps), int(tile_tokens))


def _is_rms_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and \
        isinstance(getattr(module, "weight", None), torch.Tensor)


def tile_norms(model: nn.Module, tile_tokens: int = TILE_TOKENS) -> int:
    """Make every transformers RMSNorm of ``model`` (``*RMSNorm`` with ``weight`` and
    ``variance_epsilon``) tiled, in place; returns how many."""
    if tile_tokens < 1:
        raise ValueError(f"tile_tokens must be >= 1, got {tile_tokens}")
    count = 0
    for module in model.modules():
        if _is_rms_norm(module):
            module.forward = _TiledForward(module, tile_tokens)
            count += 1
    if not count:
        raise TypeError(f"{type(model).__name__} has no RMSNorm with weight and variance_epsilon")
    return count


class _TiledForward:
    """An RMSNorm's forward, tiled (an object, not a closure: the module stays deep-copyable)."""

    def __init__(self, module: nn.Module, tile_tokens: int):
        self.module, self.tile_tokens = module, tile_tokens

    def __call__(self, hidden_states: torch.Tensor) -> torch.Tensor:
        m = self.module
        return rms_norm_tiled(hidden_states, m.weight, m.variance_epsilon, self.tile_tokens)
