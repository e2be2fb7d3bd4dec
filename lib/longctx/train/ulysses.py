"""Ulysses sequence parallelism, registered as a transformers attention implementation.

Each of the ``sp`` ranks of a sequence-parallel group holds ``S/sp`` consecutive tokens. Inside
attention one all-to-all turns q/k/v from *sequence-sharded, all heads* into *full sequence,
``1/sp`` of the heads*; attention runs locally; the inverse all-to-all brings the output back
to sequence shards. Everything outside attention (embeddings, MLPs, norms, the loss) works on the
local shard unchanged, so a stock Hugging Face Llama runs under SP by switching its attention:

    from longctx.train import ulysses
    ulysses.enable(model)                        # registers "ulysses", sets attn_implementation
    batch = ulysses.shard_inputs(full_batch)     # the one function that shards inputs
    model(**batch)

* One all-to-all carries q, k and v together (per destination rank the three head slices are
  concatenated), and its backward is the inverse all-to-all (:class:`_AllToAll`).
* GQA: with ``kv_heads % sp == 0`` KV heads are split; with ``sp % kv_heads == 0`` each KV head
  is replicated ``sp / kv_heads`` times first (autograd sums the replicas' gradients). Other
  combinations fail at start-up (:func:`check_heads`) with the valid choices.
* Packed documents: positions restart at each document (transformers' convention). The rank
  gathers the global position ids once per forward (cached across layers) and attends within
  documents only: flash-attn's varlen kernel on GPU, a block-diagonal causal mask for SDPA
  (CPU, or GPU without flash-attn). That mask is ``S x S`` booleans (1 TiB at 1M tokens), so
  SDPA refuses packed documents longer than :data:`MAX_SDPA_MASK_TOKENS` (install flash-attn).
  A single document (every stage-2 sample) takes the plain causal kernel at any length.
  SDPA gets the KV heads as they are (``enable_gqa=True``), never copies repeated to Hq heads.
* Padding: :func:`shard_inputs` pads the sequence to a multiple of ``sp`` at the end with label
  -100. Causality already keeps every real token from attending to the (later) padding; the
  padding's own outputs carry no loss.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.distributed as tdist
import torch.nn.functional as F

from . import dist

__all__ = ["HAS_FLASH_ATTN", "IGNORE_INDEX", "MAX_SDPA_MASK_TOKENS", "check_heads", "valid_sp", "padded_length", "require_divisible",
           "seq_to_heads", "heads_to_seq", "local_attention", "document_ids", "ulysses_attention_forward",
           "register", "enable", "shard_inputs"]

IGNORE_INDEX = -100

# SDPA's packed-document mask is S x S booleans: 256 MiB at this length, 1 TiB at 1M tokens.
MAX_SDPA_MASK_TOKENS = 16384

# Capability flag, probed once: flash-attn installed and a GPU to run it on.
HAS_FLASH_ATTN = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


# --------------------------------------------------------------------------- validation


def valid_sp(num_heads: int, num_kv_heads: int, limit: int | None = None) -> list[int]:
    """Sequence-parallel degrees Ulysses supports for this head layout."""
    limit = limit or num_heads
    return [d for d in range(1, min(num_heads, limit) + 1)
            if num_heads % d == 0 and (num_kv_heads % d == 0 or d % num_kv_heads == 0)]


def check_heads(num_heads: int, num_kv_heads: int, sp: int) -> str:
    """``'split'`` or ``'replicate'`` (how KV heads are spread), or a ValueError with the numbers."""
    if num_heads % num_kv_heads:
        raise ValueError(f"num_attention_heads={num_heads} is not a multiple of num_key_value_heads={num_kv_heads}")
    if num_heads % sp == 0 and num_kv_heads % sp == 0:
        return "split"
    if num_heads % sp == 0 and sp % num_kv_heads == 0:
        return "replicate"
    raise ValueError(
        f"Ulysses cannot shard {num_heads} query heads / {num_kv_heads} KV heads over sp={sp}: sp must divide "
        f"the query heads and either divide the KV heads or be a multiple of them; valid sp: "
        f"{valid_sp(num_heads, num_kv_heads)}")


def padded_length(seq_len: int, sp: int) -> int:
    """Smallest multiple of ``sp`` that holds ``seq_len`` tokens."""
    return -(-seq_len // sp) * sp


def require_divisible(seq_len: int, sp: int) -> None:
    """ValueError like ``sequence length 1000003 is not divisible by sp=8 (pad to 1000008)``."""
    if seq_len % sp:
        raise ValueError(f"sequence length {seq_len} is not divisible by sp={sp} "
                         f"(pad to {padded_length(seq_len, sp)})")


# --------------------------------------------------------------------------- all-to-all


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` over dim 0 in ``sp`` equal chunks. Chunk ``j`` of rank ``i`` lands as
    chunk ``i`` of rank ``j``: a transpose of the (rank, chunk) grid, so the backward is the same
    exchange applied to the gradient (the inverse all-to-all)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        tdist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        tdist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


def seq_to_heads(x: torch.Tensor, group, sp: int) -> torch.Tensor:
    """``[B, H, S/sp, D]`` (all heads, local tokens) -> ``[B, H/sp, S, D]`` (local heads, all tokens)."""
    return _qkv_to_heads([x], group, sp)[0]


def _qkv_to_heads(tensors: list[torch.Tensor], group, sp: int) -> list[torch.Tensor]:
    """One all-to-all for several ``[B, H_i, S/sp, D]`` tensors (q, k, v).

    The exchange layout is token-major, ``[sp, B, s, heads, D]``. Splitting the head dimension
    is a view whatever the input's memory layout (transformers hands q over as a transposed view
    of ``[B, s, H, D]`` memory), so ``torch.cat`` writes every destination's head slices in one
    copy, and what arrives (rank ``i``'s tokens in chunk ``i``) already is ``[B, S, heads, D]``
    for ``B = 1``: q, k and v come out as views. The backward runs the same path with one copy
    (the gradients' concatenation).
    """
    b, _, s, d = tensors[0].shape
    parts = [t.unflatten(1, (sp, t.shape[1] // sp)).permute(1, 0, 3, 2, 4) for t in tensors]  # [sp, B, s, h, D]
    packed = torch.cat(parts, dim=3)                                               # [sp, B, s, hc, D]
    out = _AllToAll.apply(packed, group)                                           # chunk i: tokens of rank i
    full = out.transpose(0, 1).reshape(b, sp * s, packed.shape[3], d)              # a view when B == 1
    return [t.transpose(1, 2) for t in _SplitHeads.apply(full, *[t.shape[1] // sp for t in tensors])]


class _SplitHeads(torch.autograd.Function):
    """``full.split(sizes, dim=2)`` whose backward writes each gradient into its slice of one
    buffer with ``copy_`` (autograd's default, ``torch.cat`` of the strided gradients, is several
    times slower on CPU when the gradients arrive head-major)."""

    @staticmethod
    def forward(ctx, full: torch.Tensor, *sizes: int):
        ctx.sizes, ctx.shape = sizes, full.shape
        return full.split(list(sizes), dim=2)

    @staticmethod
    def backward(ctx, *grads):
        out = None
        start = 0
        for size, grad in zip(ctx.sizes, grads):
            if grad is not None:
                if out is None:  # zeros only where some slice gets no gradient
                    alloc = torch.empty if all(g is not None for g in grads) else torch.zeros
                    out = alloc(ctx.shape, dtype=grad.dtype, device=grad.device)
                out[:, :, start:start + size].copy_(grad)
            start += size
        return (out, *([None] * len(ctx.sizes)))


def heads_to_seq(x: torch.Tensor, group, sp: int) -> torch.Tensor:
    """Inverse of :func:`seq_to_heads`, straight into transformers' output layout:
    ``[B, H/sp, S, D]`` -> ``[B, S/sp, H, D]``, token-major exchange as above: one copy before
    the exchange (none when ``x`` is ``[B, S, H/sp, D]`` memory, as flash-attn returns it) and one
    after."""
    b, hl, n, d = x.shape
    chunks = x.unflatten(2, (sp, n // sp)).permute(2, 0, 3, 1, 4)                 # [sp, B, s, H/sp, D]
    out = _AllToAll.apply(chunks, group)                                           # chunk i: heads of rank i
    return out.permute(1, 2, 0, 3, 4).reshape(b, n // sp, sp * hl, d)


# --------------------------------------------------------------------------- local attention


def document_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Document index per token from positions that restart per document; None for one document."""
    start = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1
    ids = start.cumsum(-1)
    return None if bool((ids[:, -1] == 0).all()) else ids


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float | None,
                    doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention within documents. ``q [B, Hq, S, D]``, ``k/v [B, Hk, S, D]`` -> ``[B, Hq, S, D]``."""
    if HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        return _flash(q, k, v, scaling, doc_ids)
    gqa = k.shape[1] != q.shape[1]    # kernels with native GQA read each KV head once (torch >= 2.5)
    if doc_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
    n = q.shape[2]
    if n > MAX_SDPA_MASK_TOKENS:
        raise ValueError(f"packed documents over {n} tokens would need an {n} x {n} SDPA mask "
                         f"({n * n * q.shape[0] / 2**30:.1f} GiB); SDPA takes at most {MAX_SDPA_MASK_TOKENS} "
                         "tokens with document masking: install flash-attn (varlen kernel) on GPU, or train "
                         "one document per sample")
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    mask = causal & (doc_ids[:, :, None] == doc_ids[:, None, :])      # [B, S, S]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scaling, enable_gqa=gqa)


def _flash(q, k, v, scaling, doc_ids):
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    b, hq, n, d = q.shape
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))                 # flash layout [B, S, H, D]
    if doc_ids is None:
        out = flash_attn_func(q, k, v, softmax_scale=scaling, causal=True)
    else:
        starts = torch.diff(doc_ids, prepend=doc_ids[:, :1] - 1, dim=-1) != 0
        starts[:, 0] = True
        offsets = (torch.arange(b, device=q.device) * n)[:, None]
        begin = (torch.arange(n, device=q.device)[None] + offsets)[starts]
        cu = torch.cat([begin, begin.new_tensor([b * n])]).to(torch.int32)
        longest = int((cu[1:] - cu[:-1]).max())
        out = flash_attn_varlen_func(q.reshape(b * n, hq, d), k.reshape(b * n, -1, d), v.reshape(b * n, -1, d),
                                     cu, cu, longest, longest, softmax_scale=scaling, causal=True)
        out = out.reshape(b, n, hq, d)
    return out.transpose(1, 2)


class _Documents:
    """Global document ids of the current forward, computed once and reused by every layer."""

    key: Any = None
    value: torch.Tensor | None = None

    @classmethod
    def get(cls, position_ids: torch.Tensor | None, group, sp: int) -> torch.Tensor | None:
        if position_ids is None:
            return None
        key = (position_ids, position_ids.data_ptr(), position_ids._version, sp)
        if cls.key is None or cls.key[0] is not position_ids or cls.key[1:] != key[1:]:
            full = dist.all_gather(position_ids, group, dim=1) if sp > 1 else position_ids
            cls.key, cls.value = key, document_ids(full)
        return cls.value


# --------------------------------------------------------------------------- the attention function


def ulysses_attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, scaling: float | None = None,
                              dropout: float = 0.0, position_ids: torch.Tensor | None = None,
                              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention interface: q ``[B, Hq, S/sp, D]``, k/v ``[B, Hk, S/sp, D]`` (local
    tokens) -> ``([B, S/sp, Hq, D], None)``. The sequence-parallel group comes from :mod:`longctx.train.dist`."""
    if attention_mask is not None:
        raise ValueError("ulysses attention takes document boundaries from position_ids; pass attention_mask=None "
                         "(pad with longctx.train.ulysses.shard_inputs instead of a padding mask)")
    if dropout:
        raise ValueError(f"ulysses attention has no dropout (got {dropout}); Llama uses attention_dropout=0")
    group, sp = dist.sp_group(), dist.current().sp
    docs = _Documents.get(position_ids, group, sp)
    if sp == 1:
        out = local_attention(query, key, value, scaling, docs)
        return out.transpose(1, 2).contiguous(), None
    hq, hk = query.shape[1], key.shape[1]
    if check_heads(hq, hk, sp) == "replicate":
        rep = sp // hk
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    q, k, v = _qkv_to_heads([query, key, value], group, sp)
    out = local_attention(q, k, v, scaling, docs)                    # [B, Hq/sp, S, D]
    return heads_to_seq(out, group, sp), None                        # [B, S/sp, Hq, D]


def register() -> None:
    """Make ``attn_implementation="ulysses"`` known to transformers (idempotent).

    No mask function is registered on purpose: transformers then passes ``attention_mask=None``
    and the kernel builds its own document-causal structure from the (global) position ids.
    """
    from transformers import AttentionInterface

    AttentionInterface.register("ulysses", ulysses_attention_forward)


def enable(model) -> None:
    """Switch a transformers model to Ulysses attention; checks its heads against the current sp."""
    register()
    config = model.config
    check_heads(config.num_attention_heads, config.num_key_value_heads, dist.current().sp)
    model.set_attn_implementation("ulysses")


# --------------------------------------------------------------------------- input sharding


def shard_inputs(batch: dict[str, torch.Tensor], sp: int | None = None, sp_rank: int | None = None,
                 pad_id: int = 0, pad: bool = True) -> dict[str, torch.Tensor]:
    """The one function that shards model inputs along the sequence.

    ``batch`` holds full-length ``[B, S]`` tensors: ``input_ids``, optional ``labels`` (already
    shifted, see :func:`longctx.train.loss.shift_labels`) and optional ``position_ids`` (default
    ``arange``; restarts mark packed documents). The sequence is padded at the end to a multiple
    of ``sp`` (``pad=False`` raises instead), then this rank's ``S/sp`` consecutive tokens are cut.
    Padding gets ``pad_id``, label -100 and positions continuing the last document.
    """
    par = dist.current()
    sp = par.sp if sp is None else sp
    sp_rank = par.sp_rank if sp_rank is None else sp_rank
    ids = batch["input_ids"]
    b, n = ids.shape
    out = dict(batch)
    if "position_ids" not in out:
        out["position_ids"] = torch.arange(n, device=ids.device).expand(b, n)
    total = padded_length(n, sp)
    if total != n:
        if not pad:
            require_divisible(n, sp)
        extra = total - n
        fill = {"input_ids": pad_id, "labels": IGNORE_INDEX}
        for name, t in out.items():
            if name == "position_ids":
                tail = t[:, -1:] + torch.arange(1, extra + 1, device=t.device)
            else:
                tail = torch.full((b, extra), fill.get(name, 0), dtype=t.dtype, device=t.device)
            out[name] = torch.cat([t, tail], dim=1)
    size = total // sp
    return {name: t[:, sp_rank * size:(sp_rank + 1) * size].contiguous() for name, t in out.items()}
