"""Build the model of one stage and apply parallelism to it from outside.

Order (torchtitan's): Hugging Face Llama -> stage RoPE (float64 rotary module) -> Ulysses
attention -> tiled RMSNorm (every norm) -> tiled MLP and activation checkpointing per decoder layer, the first layers' inputs
offloaded to host memory, as the memory estimate plans -> answer-only loss wrapper -> FSDP2
(``fully_shard`` per decoder layer, the embedding, then the root) over all ranks -> weights.

Weights come from one of three places: the seeded random init of ``model: tiny`` (identical on
every rank), a transformers checkpoint (hub id or local path: rank 0 reads it, FSDP scatters it,
the other ranks build on the meta device and never hold the full model), or the previous
stage's final checkpoint (``torch.distributed.checkpoint``, any world size).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import dist, offload, rope, ulysses
from .config import Stage, TrainConfig
from .loss import AnswerOnlyLM
from .memory import dims_from_config, plan_stage
from .tiled_mlp import tile_mlps
from .tiled_norm import tile_norms

__all__ = ["compute_dtype", "model_config", "build_model", "refuse_unfit", "decoder_layers", "apply_activation_checkpointing"]


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU, unless ``cfg.dtype`` says otherwise."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.dtype)


def model_config(cfg: TrainConfig, stage: Stage):
    """The transformers config of ``cfg.model`` with ``stage``'s RoPE and length applied."""
    if cfg.model == "tiny":
        from transformers import LlamaConfig

        t = cfg.tiny
        config = LlamaConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                             num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                             num_key_value_heads=t.num_key_value_heads, tie_word_embeddings=False,
                             bos_token_id=None, eos_token_id=None, pad_token_id=None)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(cfg.model)
    rope.apply_rope(config, stage.rope, stage.seq_len)
    config.use_cache = False
    return config


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_decoder().layers


def apply_activation_checkpointing(model: nn.Module, offload_layers: int = 0,
                                   checkpoint_stride: int = 1) -> offload.CheckpointStore:
    """Checkpoint every decoder layer (non-reentrant; FSDP's hooks stay outside the recompute), the
    inputs of the first ``offload_layers`` kept in host memory, every ``checkpoint_stride``-th of
    them stored (the others recomputed in backward); the store counts their bytes."""
    return offload.checkpoint_layers(decoder_layers(model), offload_layers, stride=checkpoint_stride)


def _apply_fsdp(wrapper: AnswerOnlyLM, par: dist.Parallel, dtype: torch.dtype, offload_params: bool = False) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype != torch.float32 else None
    kwargs = {"mesh": par.fsdp_mesh, **({"mp_policy": policy} if policy else {})}
    if offload_params:   # sharded fp32 weights and gradients live on the CPU, in pinned memory where there is CUDA
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=par.device.type == "cuda")
    for layer in decoder_layers(wrapper.lm):
        fully_shard(layer, **kwargs)
    fully_shard(wrapper.lm.get_input_embeddings(), **kwargs)
    fully_shard(wrapper, **kwargs)  # root: final norm + output head, used by the loss inside forward


def refuse_unfit(cfg: TrainConfig, stage: Stage, memory, device_type: str) -> None:
    """On a GPU, raise before any weight is loaded when the stage's plan fits neither the GPU nor the
    host budget, naming ``offload_params`` where it is off (on CPU the budgets describe no device)."""
    if device_type != "cuda" or memory.fits:
        return
    raise ValueError(f"stage {stage.name}: estimated {memory.gib['reserved']:.1f} GiB per GPU (gpu_memory_gb="
                     f"{cfg.gpu_memory_gb:g}) and {memory.gib['host']:.1f} GiB host per GPU (host_memory_gb="
                     f"{cfg.host_memory_gb:g} per node{memory.stride_note()}): does not fit" +
                     ("" if cfg.offload_params else "; offload_params: true keeps weights, gradients and AdamW state "
                      "in host memory (python -m longctx.train --dry-run shows what it needs)"))


def build_model(cfg: TrainConfig, stage: Stage, par: dist.Parallel, init_from: Path | None = None) -> AnswerOnlyLM:
    """The stage's training module on ``par``'s device, weights loaded.

    ``init_from``: the previous stage's final checkpoint folder, or None for the base model.
    """
    from transformers import AutoModelForCausalLM

    from . import checkpoint

    config = model_config(cfg, stage)
    ulysses.check_heads(config.num_attention_heads, config.num_key_value_heads, par.sp)
    if getattr(config, "tie_word_embeddings", False) and par.world_size > 1:
        raise ValueError(f"{cfg.model} ties input and output embeddings; FSDP here shards them separately "
                         "(Llama-3.1-8B does not tie them)")
    seeded = cfg.model == "tiny" and init_from is None
    if seeded:
        torch.manual_seed(cfg.seed)
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    rope.install_rope(lm, precision=stage.rope.precision)   # the phases the serving engine will compute
    ulysses.enable(lm)
    dtype = compute_dtype(cfg, par.device)
    memory = plan_stage(cfg, stage, par.world_size, dtype.itemsize, dims_from_config(config))
    refuse_unfit(cfg, stage, memory, par.device.type)
    if cfg.norm_tile_tokens:
        tile_norms(lm, cfg.norm_tile_tokens)      # before the checkpoint wrappers: every norm, the final one too
    if memory.tiled_mlp_tokens:
        tile_mlps(decoder_layers(lm), memory.tiled_mlp_tokens)
    store = (apply_activation_checkpointing(lm, memory.offload_layers, memory.checkpoint_stride)
             if cfg.activation_checkpointing else None)
    if store is not None and cfg.host_pool and memory.stored_layers:   # exactly their bytes, pinned once
        store.pool = offload.HostPool(memory.gib["host_pool_bytes"])
    wrapper = AnswerOnlyLM(lm, cfg.loss_chunk_tokens)
    wrapper.memory_plan, wrapper.checkpoint_store = memory, store   # what the estimate chose; saved-bytes counts
    if memory.tiled_mlp_tokens or memory.offload_layers:
        pool = f", in one host pool of {memory.gib['host_pool_bytes'] / 2**30:.2f} GiB" if store and store.pool else ""
        dist.print0(f"stage {stage.name}: MLP tiles of {memory.tiled_mlp_tokens or 'off'} tokens, "
                    f"{memory.offload_layers}/{config.num_hidden_layers} layer checkpoints in host memory"
                    f"{memory.stride_note()}{pool} (estimate {memory.gib['total']:.1f} GiB GPU, "
                    f"{memory.gib['host']:.1f} GiB host per rank)")
    offload_params = cfg.offload_params
    if offload_params and par.fsdp_mesh is None:
        raise ValueError("offload_params needs a process group: dist.init(one_rank_group=True) on one rank")
    if par.world_size > 1 or offload_params:
        _apply_fsdp(wrapper, par, dtype, offload_params)
    if seeded:
        if not offload_params:       # fully_shard placed the shards: on the CPU with offload_params
            wrapper.to(par.device)
    else:
        wrapper.to_empty(device="cpu" if offload_params else par.device)
        if offload_params:           # buffers (not sharded) go to the device; the rotary phases are attributes
            for module in wrapper.modules():
                for name, buf in module._buffers.items():
                    if buf is not None:
                        module._buffers[name] = buf.to(par.device)
        if init_from is not None:
            checkpoint.load(init_from, wrapper)
        else:
            _load_pretrained(cfg.model, wrapper, par)
    if par.world_size == 1 and dtype != torch.float32 and not offload_params:
        wrapper.autocast_dtype = dtype  # one device: fp32 master weights, bf16 compute via autocast
    return wrapper


def _load_pretrained(source: str, wrapper: AnswerOnlyLM, par: dist.Parallel) -> None:
    """Rank 0 reads the transformers checkpoint; FSDP scatters it to every rank's shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoModelForCausalLM

    full = {}
    if par.is_main:
        donor = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        full = {f"lm.{k}": v for k, v in donor.state_dict().items()}
        del donor
    if par.fsdp_mesh is None:
        missing, unexpected = wrapper.load_state_dict(full, strict=False)
        if unexpected or [k for k in missing if "rotary" not in k]:
            raise ValueError(f"{source}: missing {missing[:3]} unexpected {unexpected[:3]}")
        return
    set_model_state_dict(wrapper, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
