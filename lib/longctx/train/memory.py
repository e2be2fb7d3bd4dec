"""Per-GPU device memory and host memory of one training stage, from the architecture.

Used by the dry run, by :func:`plan` (which switches tiled MLP and checkpoint offload on where
they are needed) and by the one-GPU benchmark. With ``N`` parameters, ``W`` ranks, ``P`` the
sequence-parallel degree, ``t = ceil(S / P)`` tokens per rank, hidden ``d``, MLP width ``I``,
``Hq``/``Hk`` heads of size ``D``, vocabulary ``V``, ``L`` layers, ``b`` bytes per compute
element (bf16: 2), ``k`` layers offloaded, ``tau`` MLP tile tokens:

* training state (FSDP over all ``W`` ranks, gradients reduce-scattered every micro-batch so
  they stay sharded): fp32 weights, fp32 gradients, AdamW's two fp32 moments, ``16 N / W``;
  the benchmark (``optimizer=False``, one GPU): weights and gradients in ``b`` bytes, ``2 b N``;
* weight copies in the compute dtype: FSDP holds two gathered decoder layers (current and
  prefetched) and the root's output head for the whole step, ``(2 N_layer + V d) b``; one rank
  with fp32 weights under autocast caches a ``b``-byte copy of every weight, ``N b``;
* what the root and the embedding keep through backward (FSDP, ``b`` < 4): the output head's
  unsharded gradient and its fp32 copy for the reduce-scatter, ``V d (b + 4)``; the embedding's
  gathered weight and its gradient, ``2 V d b``;
* activation checkpoints (each layer's input; exact, checked against the saved bytes on CPU):
  ``(L - k) t d b`` on the device and ``k t d b`` in pinned host memory (``b`` = 4 on one rank
  with fp32 weights under autocast, whose residual stream stays fp32), plus two layers'
  inputs on the device while offloaded ones are in flight (copy out, prefetch back); without
  activation checkpointing ``L t (14 d + 4 I + 2 (Hq + 2 Hk) D) b`` (a coarse bound);
* one layer's working set while it is recomputed and differentiated: attention
  ``t (6 Hq + 8 Hk) D b``, MLP ``6 t I b`` (gate, up, product and their gradients) or, tiled,
  ``6 tau I b`` plus ``2 t d b`` for the tiles' outputs and gradients, and fp32 norm copies
  ``4 t d 4``;
* the chunked loss: ``3 x chunk x V x 4`` (fp32 logits, softmax, gradient);
* AdamW's temporaries at the step, after the activations are gone: ``4 N / W``;
* a fixed 2 GiB for the CUDA context, NCCL buffers and the allocator, and 10%.

The device total is the state plus the larger of the backward phase and the optimizer step.
Units are GiB (2**30 bytes). It aims at ~15% against ``max_memory_allocated``; the checkpoint
part is exact on CPU (``tests/test_memory_estimate.py``); the GPU calibration is pending
(``bench/gpu_train_throughput.py`` records estimate and measured peak side by side).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelDims", "KNOWN", "dims_of", "dims_from_config", "checkpoint_bytes", "estimate", "MemoryPlan", "plan",
           "plan_stage", "GIB"]

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


def checkpoint_bytes(dims: ModelDims, tokens: int, compute_bytes: int, offload_layers: int = 0) -> tuple[int, int]:
    """Bytes of the layer inputs activation checkpointing keeps for ``tokens`` tokens on a rank:
    ``(on the device, in host memory)``."""
    per_layer = tokens * dims.hidden * compute_bytes
    return (dims.layers - offload_layers) * per_layer, offload_layers * per_layer


def estimate(dims: ModelDims, seq_len: int, sp: int, world_size: int, compute_bytes: int = 2,
             activation_checkpointing: bool = True, loss_chunk_tokens: int = 1024, tiled_mlp_tokens: int = 0,
             offload_layers: int = 0, optimizer: bool = True) -> dict[str, float]:
    """GiB per GPU by component, ``total`` (device), ``host`` (pinned host memory per GPU) and
    ``tokens_per_gpu``. ``tiled_mlp_tokens`` 0: MLP not tiled; ``optimizer`` False: the
    benchmark's forward + backward in ``compute_bytes`` weights and gradients, no FSDP."""
    if offload_layers and not activation_checkpointing:
        raise ValueError("offloading checkpoints needs activation_checkpointing")
    b, t = compute_bytes, math.ceil(seq_len / sp)
    d, i, dh, v, n = dims.hidden, dims.intermediate, dims.head_dim, dims.vocab, dims.params
    fsdp = world_size > 1 and optimizer
    head = v * d
    state = 16 * n / world_size if optimizer else 2 * b * n
    if fsdp:
        copies = (2 * dims.layer_params + head) * b
    else:
        copies = n * b if optimizer and b < 4 else 0
    # one rank with fp32 weights under autocast: the residual stream, so each layer's input, stays fp32
    ckpt_b = 4 if optimizer and not fsdp else b
    if activation_checkpointing:
        on_device, on_host = checkpoint_bytes(dims, t, ckpt_b, offload_layers)
    else:
        on_device, on_host = dims.layers * t * (14 * d + 4 * i + 2 * (dims.heads + 2 * dims.kv_heads) * dh) * b, 0
    tiled = 0 < tiled_mlp_tokens < t
    mlp = 6 * tiled_mlp_tokens * i * b + 2 * t * d * b if tiled else 6 * t * i * b
    backward = {
        "weight_copies": copies,
        "root_head_grad": head * (b + (4 if b < 4 else 0)) if fsdp else 0,
        "embedding_end": 2 * head * b if fsdp else 0,
        "checkpoints": on_device,
        "offload_staging": 2 * t * d * ckpt_b if offload_layers else 0,
        "layer_working_set": t * (6 * dims.heads + 8 * dims.kv_heads) * dh * b + mlp + 4 * t * d * 4,
        "loss_chunk": 3 * loss_chunk_tokens * v * 4,
    }
    parts = {"states": state, **backward, "optimizer_temporaries": 4 * n / world_size if optimizer else 0}
    parts = {k: x / GIB for k, x in parts.items()}
    peak = parts["states"] + max(sum(x / GIB for x in backward.values()), parts["optimizer_temporaries"])
    parts["overhead"] = 2.0 + 0.1 * peak
    parts["total"] = peak + parts["overhead"]
    parts["host"] = on_host / GIB
    parts["tokens_per_gpu"] = t
    return parts


@dataclass(frozen=True)
class MemoryPlan:
    """Tiling and offload chosen for one stage, and the estimate they give."""

    tiled_mlp_tokens: int      # 0: the MLP is not tiled
    offload_layers: int        # decoder layers whose checkpoint lives in host memory (the first ones)
    gib: dict                  # :func:`estimate` of this choice
    fits_gpu: bool
    fits_host: bool

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_host


def plan(dims: ModelDims, seq_len: int, sp: int, world_size: int, gpu_gib: float, host_gib_per_gpu: float,
         tiled_mlp: str = "auto", mlp_tile_tokens: int = 8192, offload: str = "auto", **kw) -> MemoryPlan:
    """Choose tiling (``always``/``never``/``auto``) and the number of offloaded layers (``all``/
    ``none``/``auto``) for a stage. ``auto`` tiles the MLP only if the untiled estimate does not fit
    ``gpu_gib``, then offloads the fewest layers that make it fit (as many layers stay on the
    device as fit); ``kw`` goes to :func:`estimate`."""
    def est(tile: int, k: int) -> dict:
        return estimate(dims, seq_len, sp, world_size, tiled_mlp_tokens=tile, offload_layers=k, **kw)

    checkpointing = kw.get("activation_checkpointing", True)
    base_k = dims.layers if offload == "all" and checkpointing else 0
    if tiled_mlp == "always":
        tile = mlp_tile_tokens
    elif tiled_mlp == "auto" and est(0, base_k)["total"] > gpu_gib:
        tile = mlp_tile_tokens
    else:
        tile = 0
    k = base_k
    if offload == "auto" and checkpointing:
        while k < dims.layers and est(tile, k)["total"] > gpu_gib:
            k += 1
    gib = est(tile, k)
    return MemoryPlan(tile if tile < gib["tokens_per_gpu"] else 0, k, gib, gib["total"] <= gpu_gib,
                      gib["host"] <= host_gib_per_gpu)


def plan_stage(cfg, stage, world_size: int, compute_bytes: int, dims: ModelDims | None = None) -> MemoryPlan:
    """:func:`plan` for ``stage`` of the stage-3 params ``cfg`` on ``world_size`` ranks (the
    training build and the dry run make the same choice)."""
    host_per_gpu = cfg.host_memory_gb / min(cfg.gpus_per_node, world_size)
    return plan(dims or dims_of(cfg), stage.seq_len, stage.sp, world_size, cfg.gpu_memory_gb, host_per_gpu,
                cfg.tiled_mlp, cfg.mlp_tile_tokens, cfg.offload_checkpoints, compute_bytes=compute_bytes,
                activation_checkpointing=cfg.activation_checkpointing, loss_chunk_tokens=cfg.loss_chunk_tokens)
