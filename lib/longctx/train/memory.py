"""Per-GPU device memory and host memory of one training stage, from the architecture.

Used by the dry run, by :func:`plan` (which switches tiled MLP and checkpoint offload on where
they are needed) and by the one-GPU benchmark. The model follows the step phase by phase and
reports the largest; every term is what is live at that moment, checked against the tracked
peak of the real 8B step on fake tensors (``longctx.train.memtrack``, ``bench/gpu_train_throughput.py
--fake``, ``tests/test_memory_estimate.py``). Notation: ``N`` parameters, ``P`` per decoder layer,
``W`` ranks, ``t = ceil(S / sp)`` tokens per rank, hidden ``d``, MLP width ``I``, ``Hq``/``Hk``
heads of size ``D``, vocabulary ``V``, ``L`` layers, ``b`` bytes of the compute dtype, ``r`` bytes
of the residual stream (``b``; 4 on one rank with fp32 weights under autocast), ``c = t d r`` one
residual-stream tensor, ``k`` layers offloaded, ``s`` the checkpoint stride (of the offloaded
layers every ``s``-th stores its input, ``ceil(k / s)`` of them), ``tau`` MLP tile tokens.

* ``states``: FSDP over ``W`` ranks: fp32 weights, gradients and AdamW's moments, ``16 N / W``; one
  rank with the optimizer: the same, ``16 N`` (no GPU holds it for 8B: use ``offload_states``);
  the benchmark (``optimizer=False``): weights in ``b`` bytes, ``b N``; ``offload_states`` (the
  trainer's ``offload_params``): none (weights, gradients and moments in host memory; FSDP2's
  ``CPUOffloadPolicy``, one rank too). Host: :func:`host_state_bytes`.
* ``weight_copies``: FSDP's gathered current and prefetched layers and the root's head,
  ``(2 P + V d) b``; with ``offload_states`` on one rank ``(P + V d) b`` (FSDP2 copies a layer in
  when it is used; tracked), and at the end of backward the root and the embedding ``2 V d b``
  while the root's gradient is reduced in fp32 (``embedding_end``).
* ``gradients`` (``b`` bytes where they are not part of ``states``): they build up as backward
  walks the layers while the checkpoints are freed: at layer ``i`` the head's and layers
  ``i+1 .. L-1``'s, plus what layer ``i`` has produced so far.
* ``checkpoints``: the inputs of layers ``k .. i`` still on the device at layer ``i`` (all
  ``L - k`` at the head); ``offload_staging``: an offloaded layer's input restored and the
  previous one prefetched, ``2 c``; with a stride, at a skipped layer ``i`` the inputs of its
  group from the stored one up to ``i`` (``s c`` at the top of a group: each recomputed input
  stays on the device for its own layer's backward). Host: ``ceil(k / s)`` layer inputs, each
  pinned as the caching host allocator rounds it (the next power of two), or with ``host_pool``
  at its size in one buffer (``host_pool_bytes``): ``host``; ``host_tensor_bytes`` unrounded.
* ``recompute_forward`` (stride > 1): at a skipped layer, before its backward, the previous layer
  runs once more without saving anything: the incoming gradient, the group's inputs so far, and
  that forward's transient tensors (normalised input, q, k, v, attention output and log-sum-exp;
  the MLP's are smaller, one tile), next to the gradients so far.
* ``layer_working_set``: the largest of three moments of a layer's recompute and backward:
  the attention backward (saved: normalised input ``c``, q, k, v, output, fp32 log-sum-exp;
  the residual gradient ``c``, the output gradient, and flash-attention 2's workspace: dq/dk/dv,
  fp32 ``dq_accum`` and ``softmax_d``, GQA's dk/dv over all query heads); the MLP backward (the
  same saved attention tensors, the attention residual and normalised MLP input, the incoming
  gradient, the tile gradients and their concatenation ``2 c``, and one tile's gate/up/product and
  their gradients ``7 tau I b``, or ``7 t I b`` untiled); with transformers' eager RMSNorm, its
  backward (two saved fp32 copies and five fp32 temporaries, ``7 t d 4``, plus ``2 t d 4`` saved
  per norm of the layer still waiting). The tiled norm (``norm_tile_tokens``) keeps ``4 t``; its
  backward holds the residual and incoming gradients, its input-gradient buffer and the MLP's
  concatenated input gradient ``4 c``, and five
  fp32 temporaries of one tile ``5 tau_n d 4``, next to the attention's saved tensors.
* the head: the final norm's input and output, the hidden-state gradient buffer ``3 c`` and the
  loss chunk's fp32 logits, softmax and gradient ``3 x chunk x V x 4``, next to all device
  checkpoints; the embedding's backward at the end, next to all gradients.
* AdamW's temporaries at the step, after the activations are gone: ``4 N / W``.

``total`` is comparable with ``torch.cuda.max_memory_allocated``; ``overhead`` (2 GiB for the
CUDA context, cuBLAS and NCCL, and 3 % for allocator rounding with ``expandable_segments``) is
added only where the plan checks the fit (``reserved``). Units are GiB (2**30 bytes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelDims", "KNOWN", "dims_of", "dims_from_config", "checkpoint_bytes", "stored_layers", "recompute_fraction",
           "estimate", "MemoryPlan", "plan", "plan_stage", "GIB", "param_numels", "host_state_bytes", "pool_slice_bytes"]

GIB = 2**30


@dataclass(frozen=True)
class ModelDims:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int

    @property
    def layer_params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return attn + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + 2 * self.vocab * self.hidden + self.hidden


_LLAMA_31_8B = ModelDims(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256, head_dim=128)
KNOWN = {  # so the dry run needs neither the hub nor the weights
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA_31_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA_31_8B,
    "meta-llama/Meta-Llama-3.1-8B-Instruct": _LLAMA_31_8B,
}


def _from_hf_dict(c: dict) -> ModelDims:
    heads = c["num_attention_heads"]
    return ModelDims(hidden=c["hidden_size"], intermediate=c["intermediate_size"], layers=c["num_hidden_layers"],
                     heads=heads, kv_heads=c.get("num_key_value_heads", heads), vocab=c["vocab_size"],
                     head_dim=c.get("head_dim") or c["hidden_size"] // heads)


def dims_from_config(config) -> ModelDims:
    """Architecture of a transformers config object."""
    return _from_hf_dict(config.to_dict())


def dims_of(cfg) -> ModelDims:
    """Architecture of ``cfg.model``: the tiny params, a known hub id, or a local ``config.json``."""
    if cfg.model == "tiny":
        t = cfg.tiny
        return ModelDims(t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads,
                         t.num_key_value_heads, t.vocab_size, t.hidden_size // t.num_attention_heads)
    if cfg.model in KNOWN:
        return KNOWN[cfg.model]
    local = Path(cfg.model) / "config.json"
    if local.is_file():
        return _from_hf_dict(json.loads(local.read_text(encoding="utf-8")))
    raise ValueError(f"model {cfg.model!r}: architecture unknown offline; use a local checkpoint folder or one of "
                     f"{sorted(KNOWN)}")


def stored_layers(offload_layers: int, checkpoint_stride: int = 1) -> int:
    """Offloaded layers that store their input: layers 0, s, 2 s, ... below ``offload_layers``."""
    return len(range(0, offload_layers, max(1, checkpoint_stride)))


def checkpoint_bytes(dims: ModelDims, tokens: int, compute_bytes: int, offload_layers: int = 0,
                     checkpoint_stride: int = 1) -> tuple[int, int]:
    """Bytes of the layer inputs activation checkpointing keeps for ``tokens`` tokens on a rank:
    ``(on the device, in host memory)``."""
    per_layer = tokens * dims.hidden * compute_bytes
    return (dims.layers - offload_layers) * per_layer, stored_layers(offload_layers, checkpoint_stride) * per_layer


POOL_ALIGN = 512   # bytes: each layer input's slice of the host pool starts on this boundary


def pool_slice_bytes(nbytes: int) -> int:
    """Bytes a layer input of ``nbytes`` takes in the host pool (``longctx.train.host_pool.HostPool``)."""
    return -(-nbytes // POOL_ALIGN) * POOL_ALIGN


def _pow2(n: int) -> int:
    return 0 if n <= 0 else 1 << (int(n) - 1).bit_length()


def param_numels(dims: ModelDims) -> list[int]:
    """Elements of every parameter tensor of a Llama of ``dims`` (what FSDP2 shards one by one)."""
    d, i_, dh = dims.hidden, dims.intermediate, dims.head_dim
    layer = [d * dh * dims.heads, d * dh * dims.kv_heads, d * dh * dims.kv_heads, dh * dims.heads * d,
             d * i_, d * i_, i_ * d, d, d]
    return dims.layers * layer + [dims.vocab * d, dims.vocab * d, d]


def host_state_bytes(dims: ModelDims, world_size: int, weight_bytes: int, optimizer: bool) -> tuple[int, int]:
    """Host bytes per rank of FSDP2's CPU offload, ``(resident, at the end)``: resident all along,
    every parameter's shard pinned (each tensor its own block, rounded to a power of two by the
    caching host allocator) in fp32 with the optimizer (``weight_bytes`` without: the benchmark's
    bf16 model) and AdamW's two moments (pageable, ``8 N / W``); added at the end of backward and
    at the step, when the layer checkpoints are gone: the gradients, pinned the same way, and
    AdamW's foreach temporaries (``4 N / W``)."""
    w = 4 if optimizer else weight_bytes
    pinned = sum(_pow2(-(-numel // world_size) * w) for numel in param_numels(dims))
    moments, temporaries = (8 * dims.params // world_size, 4 * dims.params // world_size) if optimizer else (0, 0)
    return pinned + moments, pinned + temporaries


OVERHEAD_GIB, OVERHEAD_FRACTION = 2.0, 0.03


def estimate(dims: ModelDims, seq_len: int, sp: int, world_size: int, compute_bytes: int = 2,
             activation_checkpointing: bool = True, loss_chunk_tokens: int = 1024, tiled_mlp_tokens: int = 0,
             offload_layers: int = 0, optimizer: bool = True, norm_tile_tokens: int = 0,
             offload_states: bool = False, checkpoint_stride: int = 1, host_pool: bool = False) -> dict[str, float]:
    """GiB per GPU by term at the peak phase, ``total`` (device, as ``max_memory_allocated``),
    ``reserved`` (``total`` + ``overhead``), ``host`` (pinned host memory per GPU), ``phase`` and
    ``tokens_per_gpu``. ``tiled_mlp_tokens`` 0: MLP not tiled; ``norm_tile_tokens`` 0:
    transformers' eager RMSNorm; ``optimizer`` False: the benchmark's forward + backward in
    ``compute_bytes`` weights and gradients; ``offload_states``: weights, gradients and optimizer
    state in host memory (FSDP2 CPU offload), the device holding two gathered layers and the head;
    ``checkpoint_stride``: of the offloaded layers every ``s``-th stores its input, the others'
    are recomputed; ``host_pool``: the stored inputs share one exactly sized pinned buffer
    (``host_pool_bytes``) instead of a power-of-two block each."""
    if offload_layers and not activation_checkpointing:
        raise ValueError("offloading checkpoints needs activation_checkpointing")
    b, t = compute_bytes, math.ceil(seq_len / sp)
    d, i_, dh, v, n, p_layer = dims.hidden, dims.intermediate, dims.head_dim, dims.vocab, dims.params, dims.layer_params
    hq, hk, L, k, s = dims.heads, dims.kv_heads, dims.layers, offload_layers, max(1, checkpoint_stride)
    fsdp = (world_size > 1 and optimizer) or offload_states    # FSDP2 wraps every layer (CPU offload: one rank too)
    one_rank_fp32 = optimizer and not fsdp and not offload_states and b < 4
    r = 4 if one_rank_fp32 else b                    # autocast keeps the residual stream in fp32
    c = t * d * r
    head = v * d
    # ---- states, weight copies, and the bytes per gradient element outside the states
    if offload_states:   # one rank: FSDP2 copies a layer in when it is used, no prefetched copy (tracked)
        state, copies, grad_b = 0, ((2 if world_size > 1 else 1) * p_layer + head) * b, 0
    elif fsdp:
        state, copies, grad_b = 16 * n / world_size, (2 * p_layer + head) * b, 0
    elif optimizer:
        state, copies, grad_b = 16 * n, 0, 0         # fp32 gradients are part of the states
    else:
        state, copies, grad_b = b * n, 0, b
    # ---- one layer's recompute and backward
    qb, kvb = t * hq * dh * b, 2 * t * hk * dh * b
    eager = norm_tile_tokens <= 0
    norm_saved = 2 * t * d * 4 if eager else 4 * t      # per norm waiting for its backward
    attn_saved = c + qb + kvb + qb + 4 * t * hq + norm_saved
    flash = qb + kvb + 4 * t * hq + 4 * t * hq * dh + (2 * t * hq * dh * b if hk < hq else 0)
    attention_bwd = attn_saved + c + qb + flash
    tiled = 0 < tiled_mlp_tokens < t
    mlp_ws = 7 * tiled_mlp_tokens * i_ * b + 2 * c if tiled else 6 * t * i_ * b + c
    mlp_bwd = attn_saved + norm_saved + c + c + mlp_ws + (0 if eager else c)   # h1 (tiled norm saves it), normed2, g
    # the tiled norm's backward: the post-attention norm's, next to the attention's saved tensors, with the
    # residual and incoming gradients, its input gradient buffer, the tiled MLP's concatenated input gradient
    # and ~5 fp32 temporaries of one tile (tracked: 64K tokens in one 64K-token tile, 3 layers: 14.7 GiB, this
    # term 14.6; with the default 8K-token tiles 0.6 GiB, rarely the peak)
    norm_bwd = attn_saved + c + 7 * t * d * 4 if eager else attn_saved + 4 * c + 5 * min(norm_tile_tokens, t) * d * 4
    # a layer's forward saving nothing (a skipped layer's input recomputed): its output, and at the attention
    # the normalised input, q, k, v (and their rotated copies), the attention output and log-sum-exp
    forward_ws = c + c + 2 * (qb + kvb) + qb + 4 * t * hq
    layer_grads = {"attention": (3 * d * i_ + hq * dh * d + d) * grad_b, "mlp": 0, "norm": 3 * d * i_ * grad_b}
    if fsdp or offload_states:                       # the current layer's unsharded gradients before reduce-scatter
        layer_grads = {key: p_layer * (b + 4) for key in layer_grads}
    head_grads = (head + d) * grad_b
    if not activation_checkpointing:
        act = L * t * (14 * d + 4 * i_ + 2 * (hq + 2 * hk) * dh) * b          # a coarse bound
        phases = {"backward": {"gradients": head_grads, "checkpoints": act, "offload_staging": 0,
                               "layer_working_set": max(attention_bwd, mlp_bwd, norm_bwd) - attn_saved}}
    else:
        phases = {}
        # gradients grow and checkpoints shrink linearly in i; the staging peaks at the top of a group
        for i in sorted({L - 1, k, k - 1, 0, 1, min(s, k) - 1}, reverse=True):
            if not 0 <= i < L:
                continue
            on_device = max(0, i - k + 1) * c
            # restored + prefetched (c at layer 0: nothing left to prefetch; op by op so at 64K). At 512K and
            # 1M with all 32 layers offloaded and weights + gradients on the device the tracker finds about one
            # more c at layer 0's attention backward (the estimate 5-6 % low), not yet explained
            skipped_below = i % s if i < k else 0         # recomputed inputs of this group up to layer i
            staging = ((skipped_below + 1) * c if skipped_below else 2 * c if i >= s else c) if i < k else 0
            done = head_grads + (L - 1 - i) * p_layer * grad_b
            for name, ws in (("attention", attention_bwd), ("mlp", mlp_bwd), ("norm", norm_bwd)):
                phases[f"layer {i} {name} backward"] = {
                    "gradients": done + layer_grads[name],
                    "checkpoints": on_device, "offload_staging": staging, "layer_working_set": ws}
            if skipped_below:                            # the previous layer run again, saving nothing
                phases[f"layer {i} recompute forward"] = {
                    "gradients": done, "checkpoints": on_device, "offload_staging": skipped_below * c,
                    "layer_working_set": c + forward_ws}
        final_norm = 2 * t * d * 4 + 5 * t * d * 4 if eager else 4 * t
        phases["head backward"] = {"gradients": head_grads, "checkpoints": (L - k) * c, "offload_staging": 0,
                                   "layer_working_set": 3 * c + final_norm,
                                   "loss_chunk": 3 * loss_chunk_tokens * v * 4}
    if not fsdp:
        phases["embedding backward"] = {"gradients": (n - head) * grad_b, "checkpoints": 0, "offload_staging": 0,
                                        "layer_working_set": c + head * b}
    if offload_states:
        # tracked on fake tensors (FSDP2 on one rank): the root (head) stays gathered with its gradient
        # through backward; at the end the embedding is gathered with its gradient while the root's
        # gradient is reduce-scattered in fp32 (input and output; the bf16 gradient is freed by then)
        rb = 4 if b < 4 else b
        phases["end of backward"] = {"weight_copies": 2 * head * b, "root_head_grad": 0,
                                     "embedding_end": head * b + head * rb * (1 + 1 / world_size)}
    fixed = {"states": state, "weight_copies": copies,
             "root_head_grad": head * b if offload_states else head * (b + (4 if b < 4 else 0)) if fsdp else 0,
             "embedding_end": 2 * head * b if fsdp and not offload_states else 0}
    phase, terms = max(phases.items(), key=lambda kv_: sum({**fixed, **kv_[1]}.values()))
    parts = {**fixed, "gradients": 0, "checkpoints": 0, "offload_staging": 0, "layer_working_set": 0, "loss_chunk": 0}
    parts.update(terms)
    backward = sum(parts.values())
    step = state + (4 * n / world_size if optimizer else 0)
    if optimizer and not offload_states and step > backward:    # offloaded: AdamW steps on the CPU
        phase = "optimizer step"
        parts = {**{key: 0 for key in parts}, "states": state}
    parts["optimizer_temporaries"] = 4 * n / world_size if phase == "optimizer step" else 0
    parts = {key: x / GIB for key, x in parts.items()}
    parts["total"] = sum(parts.values())
    parts["overhead"] = OVERHEAD_GIB + OVERHEAD_FRACTION * parts["total"]
    parts["reserved"] = parts["total"] + parts["overhead"]
    per_layer, stored = t * d * r, stored_layers(k, s)
    pinned_layer = pool_slice_bytes(per_layer) if host_pool else _pow2(per_layer)
    parts["host_checkpoints"] = stored * pinned_layer / GIB
    resident, at_end = host_state_bytes(dims, world_size, b, optimizer) if offload_states else (0, 0)
    parts["host_states"] = (resident + at_end) / GIB
    # the checkpoints' host memory stays pinned for the whole step, next to the gradients arriving at the end
    # of backward: the host pool by design (tracked on fake tensors: 512K, stride 2: 88.5 GiB, this 88.5),
    # torch's caching host allocator because it caches freed blocks (the gradients' blocks, of other sizes, do
    # not reuse them; the tracker, counting live storages, frees them first: 512K with 13 of 32 stored, 78.0)
    parts["host"] = (resident + stored * pinned_layer + at_end) / GIB
    parts["host_tensor_bytes"] = stored * per_layer
    parts["host_pool_bytes"] = stored * pool_slice_bytes(per_layer)
    parts["tokens_per_gpu"] = t
    parts["phase"] = phase
    return parts


AUTO_MAX_STRIDE = 4   # checkpoint_stride: auto goes no further (one layer forward more per 4/3 layers: ~19 %)


def recompute_fraction(skipped: int, n_layers: int) -> float:
    """Compute that ``skipped`` layer reruns (a checkpoint stride) add to a checkpointed step, as a
    fraction of its layers' work: forward, recompute and backward (about two forwards) make four
    forwards per layer; the output head and the tiled MLP's extra forward make the real fraction a
    little lower (``tests/test_checkpoint_stride.py`` counts it with ``FlopCounterMode``)."""
    return skipped / (4 * n_layers) if n_layers else 0.0


@dataclass(frozen=True)
class MemoryPlan:
    """Tiling, offload and checkpoint stride chosen for one stage, and the estimate they give."""

    tiled_mlp_tokens: int      # 0: the MLP is not tiled
    offload_layers: int        # decoder layers whose checkpoint lives in host memory (the first ones)
    gib: dict                  # :func:`estimate` of this choice
    fits_gpu: bool
    fits_host: bool
    checkpoint_stride: int = 1  # of the offloaded layers every this-many-th stores its input (1: all)
    layers: int = 0             # decoder layers of the model

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_host

    @property
    def stored_layers(self) -> int:
        return stored_layers(self.offload_layers, self.checkpoint_stride)

    def stride_note(self) -> str:
        """The checkpoint stride as the launch and the dry run print it ('' without one)."""
        if self.checkpoint_stride <= 1:
            return ""
        skipped = self.offload_layers - self.stored_layers
        return (f", checkpoint_stride {self.checkpoint_stride}: {self.stored_layers} stored, {skipped} recomputed "
                f"in backward (one more layer forward each, ~{recompute_fraction(skipped, self.layers):.0%} "
                "more compute)")


def plan(dims: ModelDims, seq_len: int, sp: int, world_size: int, gpu_gib: float, host_gib_per_gpu: float,
         tiled_mlp: str = "auto", mlp_tile_tokens: int = 8192, offload: str = "auto",
         checkpoint_stride: str | int = 1, **kw) -> MemoryPlan:
    """Choose tiling (``always``/``never``/``auto``), the number of offloaded layers (``all``/
    ``none``/``auto``) and the checkpoint stride (an int, or ``auto``) for a stage. ``auto`` tiles
    the MLP only if the untiled estimate does not fit ``gpu_gib``, then offloads the fewest layers
    that make it fit (as many layers stay on the device as fit); a stride of ``auto`` is the
    smallest (1 first: no recompute; at most ``AUTO_MAX_STRIDE``) at which that plan also fits
    ``host_gib_per_gpu``; where none
    does, the plan returned is the one that needs the least host memory within the GPU budget (or
    stride 1 if none fits the GPU), marked unfit. ``kw`` goes to :func:`estimate`."""
    checkpointing = kw.get("activation_checkpointing", True)

    def one(stride: int) -> MemoryPlan:
        def est(tile: int, k: int) -> dict:
            return estimate(dims, seq_len, sp, world_size, tiled_mlp_tokens=tile, offload_layers=k,
                            checkpoint_stride=stride, **kw)

        base_k = dims.layers if offload == "all" and checkpointing else 0
        if tiled_mlp == "always":
            tile = mlp_tile_tokens
        elif tiled_mlp == "auto" and est(0, base_k)["reserved"] > gpu_gib:
            tile = mlp_tile_tokens
        else:
            tile = 0
        k = base_k
        if offload == "auto" and checkpointing:
            while k < dims.layers and est(tile, k)["reserved"] > gpu_gib:
                k += 1
        gib = est(tile, k)
        return MemoryPlan(tile if tile < gib["tokens_per_gpu"] else 0, k, gib, gib["reserved"] <= gpu_gib,
                          gib["host"] <= host_gib_per_gpu, stride if stored_layers(k, stride) < k else 1, dims.layers)

    if checkpoint_stride != "auto":
        if not isinstance(checkpoint_stride, int) or checkpoint_stride < 1:
            raise ValueError(f"checkpoint_stride must be 'auto' or an int >= 1, got {checkpoint_stride!r}")
        return one(checkpoint_stride)
    best = last = one(1)
    for stride in range(2, min(AUTO_MAX_STRIDE, dims.layers) + 1):
        if best.fits or stored_layers(last.offload_layers, stride - 1) <= 1:   # fits, or nothing left to skip
            break
        last = one(stride)
        if last.fits:
            return last
        if last.fits_gpu and (not best.fits_gpu or last.gib["host"] < best.gib["host"]):
            best = last
        elif not last.fits_gpu and last.offload_layers == dims.layers:
            break                      # a longer stride only adds to the GPU
    return best


def plan_stage(cfg, stage, world_size: int, compute_bytes: int, dims: ModelDims | None = None) -> MemoryPlan:
    """:func:`plan` for ``stage`` of the stage-3 params ``cfg`` on ``world_size`` ranks (the
    training build and the dry run make the same choice)."""
    host_per_gpu = cfg.host_memory_gb / min(cfg.gpus_per_node, world_size)
    return plan(dims or dims_of(cfg), stage.seq_len, stage.sp, world_size, cfg.gpu_memory_gb, host_per_gpu,
                cfg.tiled_mlp, cfg.mlp_tile_tokens, cfg.offload_checkpoints,
                checkpoint_stride=getattr(cfg, "checkpoint_stride", 1), compute_bytes=compute_bytes,
                activation_checkpointing=cfg.activation_checkpointing, loss_chunk_tokens=cfg.loss_chunk_tokens,
                norm_tile_tokens=cfg.norm_tile_tokens, offload_states=getattr(cfg, "offload_params", False),
                host_pool=getattr(cfg, "host_pool", False))
