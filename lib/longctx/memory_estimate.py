"""Per-GPU memory of one training stage, estimated from the architecture (for the dry run).

The model, per rank, with ``N`` parameters, ``W`` ranks, sequence-parallel degree ``P``,
``t = ceil(S / P)`` tokens per rank, hidden ``d``, MLP width ``I``, ``Hq``/``Hk`` heads of size
``D``, vocabulary ``V``, ``b`` bytes per compute element (bf16: 2):

* sharded training state (FSDP over all ``W`` ranks): fp32 weights, fp32 gradients and AdamW's
  two fp32 moments, ``16 N / W``;
* gathered weights: two decoder layers in ``b`` bytes (current + prefetched) plus the output head
  (kept gathered by the root module during the whole step);
* activation checkpoints: each layer's input, ``L t d b`` (without activation checkpointing:
  ``L t (14 d + 4 I + 2 (Hq + 2 Hk) D) b``, a coarse bound);
* one layer's working set while it is recomputed and differentiated: attention
  ``t (6 Hq + 8 Hk) D b`` (q/k/v before and after the all-to-all, output, gradients) and MLP
  ``6 t I b`` (gate, up, product and their gradients), plus fp32 norm copies ``4 t d 4``;
* the chunked loss: ``3 x chunk x V x 4`` bytes (fp32 logits, softmax, gradient);
* a fixed 2 GiB for the CUDA context, NCCL buffers and the allocator's fragmentation, and 10%.

It is an estimate (aim: within ~20%), to pick ``nodes``/``sp`` before queueing a job;
``bench/gpu_train_throughput.py`` measures real peaks on one GPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelDims", "KNOWN", "dims_of", "estimate"]

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


def estimate(dims: ModelDims, seq_len: int, sp: int, world_size: int, compute_bytes: int = 2,
             activation_checkpointing: bool = True, loss_chunk_tokens: int = 1024) -> dict[str, float]:
    """GiB per GPU by component, and ``total``."""
    b = compute_bytes
    t = math.ceil(seq_len / sp)
    d, i, dh = dims.hidden, dims.intermediate, dims.head_dim
    parts = {
        "sharded_states": 16 * dims.params / world_size,
        "gathered_weights": (2 * dims.layer_params + dims.vocab * d) * b,
        "activation_checkpoints": dims.layers * t * d * b if activation_checkpointing
        else dims.layers * t * (14 * d + 4 * i + 2 * (dims.heads + 2 * dims.kv_heads) * dh) * b,
        "layer_working_set": t * (6 * dims.heads + 8 * dims.kv_heads) * dh * b + 6 * t * i * b + 4 * t * d * 4,
        "loss_chunk": 3 * loss_chunk_tokens * dims.vocab * 4,
    }
    parts = {k: v / GIB for k, v in parts.items()}
    parts["overhead"] = 2.0 + 0.1 * sum(parts.values())
    parts["total"] = sum(parts.values())
    parts["tokens_per_gpu"] = t
    return parts

