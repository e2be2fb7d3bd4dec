"""The variants ``bench/gpu_train_throughput.py`` measures: one model each, set up the way it trains.

Split from the benchmark script (its search, table and fake-tensor run stay there); see its
docstring for what each variant is.
"""

from __future__ import annotations

import math
import types

import torch

LLAMA_31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8)
TINY = dict(vocab_size=16384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
VARIANTS = ["hf", "ours", "ours_tiled_offload", "ours_offload_params", "alst"]
TILED = ("ours_tiled_offload", "ours_offload_params")
ANSWER_FRACTION = 0.1
GIB = 2**30
_TERMS = ("states", "weight_copies", "root_head_grad", "embedding_end", "gradients", "checkpoints", "offload_staging",
          "layer_working_set", "loss_chunk")


def one_rank_fake_group() -> None:
    """A one-rank process group whose collectives do nothing (torch's ``fake`` backend): FSDP2
    runs on fake tensors, where gloo would need data."""
    import torch.distributed as tdist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if not tdist.is_initialized():
        tdist.init_process_group("fake", store=FakeStore(), rank=0, world_size=1)


class Variant:
    """One model set up the way ``name`` trains; ``prepare(L)`` then ``step(ids, labels)``."""

    def __init__(self, name: str, dims: dict, max_len: int, device: torch.device, dtype: torch.dtype,
                 gpu_gib: float, host_gib: float, tile_tokens: int, offload: int | None = None,
                 norm_tile_tokens: int = 8192, stride: int | None = None, host_pool: bool = False):
        from longctx.train import dist, rope, ulysses
        from longctx.train.memory import ModelDims
        from transformers import AutoModelForCausalLM, LlamaConfig

        self.name, self.dims, self.device, self.dtype = name, dims, device, dtype
        self.gpu_gib, self.host_gib, self.tile_tokens, self.force_offload = gpu_gib, host_gib, tile_tokens, offload
        self.force_stride, self.host_pool = stride, host_pool
        self.model_dims = ModelDims(dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"],
                                    dims["num_attention_heads"], dims["num_key_value_heads"], dims["vocab_size"],
                                    dims["hidden_size"] // dims["num_attention_heads"])
        config = LlamaConfig(**dims, max_position_embeddings=max_len, tie_word_embeddings=False, use_cache=False,
                             rope_parameters={"rope_type": "default", "rope_theta": rope.scaling_law_theta(max_len)},
                             attn_implementation="sdpa")
        with torch.device(device):  # random init straight on the GPU (8B on the CPU takes minutes)
            self.lm = AutoModelForCausalLM.from_config(config, dtype=dtype)
        self.lm.train()
        self.store, self.offloaded, self.tile, self.stride = None, 0, 0, 1
        if name in ("hf", "alst"):
            if hasattr(self.lm, "activation_checkpointing_enable"):      # transformers >= 5.2x
                self.lm.activation_checkpointing_enable({"use_reentrant": False})
            else:
                self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if name == "alst":
                self._setup_alst()
            return
        from longctx.train.loss import AnswerOnlyLM
        from longctx.train.tiled_mlp import tile_mlps

        self.offload_params = name == "ours_offload_params"
        if not (self.offload_params and dist.current().fsdp_mesh is not None):   # the fake run made it already
            dist.init(sp=1, one_rank_group=self.offload_params)
        rope.install_rope(self.lm)
        ulysses.enable(self.lm)
        if norm_tile_tokens:
            from longctx.train.tiled_norm import tile_norms

            tile_norms(self.lm, norm_tile_tokens)
        self.norm_tile = norm_tile_tokens
        if name in TILED:
            tile_mlps(self.lm.model.layers, tile_tokens)
            self.tile = tile_tokens
        self.raw_layers = list(self.lm.model.layers)
        self.model = AnswerOnlyLM(self.lm, chunk_tokens=1024)
        if self.offload_params:
            self._setup_offload_params(dist.current())

    def _setup_offload_params(self, par) -> None:
        """The trainer's ``offload_params`` path: checkpoint wrappers once (prepare() points them at
        each length's store), then FSDP2 with CPUOffloadPolicy on one rank (``longctx.train.model``)."""
        from longctx.train.model import _apply_fsdp
        from longctx.train.offload import checkpoint_layers

        checkpoint_layers(self.lm.model.layers, 0)
        self.wrappers = list(self.lm.model.layers)
        _apply_fsdp(self.model, par, self.dtype, offload_params=True)

    def _setup_alst(self) -> None:
        from deepspeed.runtime.activation_checkpointing.offload_activations import (
            get_checkpoint_hidden_states_offloading_ctx_manager)
        from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP

        def mlp_forward(mlp, x):
            return mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))

        def tiled(mlp, x):  # ALST's recipe: shards of hidden_size tokens
            shards = max(1, math.ceil(x.shape[1] / x.shape[2]))
            return TiledMLP.apply(mlp_forward, mlp, x, shards, [mlp.down_proj.weight, mlp.gate_proj.weight,
                                                              mlp.up_proj.weight])

        for layer in self.lm.model.layers:
            layer.mlp.forward = types.MethodType(tiled, layer.mlp)
        self.offload_ctx = lambda: get_checkpoint_hidden_states_offloading_ctx_manager(
            use_pin_memory=self.device.type == "cuda", use_streams=self.device.type == "cuda")

    def prepare(self, length: int) -> dict:
        """Per-length setup (layers offloaded for this length, and the checkpoint stride); the
        estimate's GiB for ours."""
        if self.name in ("hf", "alst"):
            return {}
        from longctx.train.memory import estimate, plan
        from longctx.train.offload import checkpoint_layers

        self.offloaded, self.stride = 0, 1
        if self.name in TILED and self.force_offload is not None:
            self.offloaded, self.stride = self.force_offload, self.force_stride or 1
        elif self.name in TILED:
            chosen = plan(self.model_dims, length, 1, 1, self.gpu_gib, self.host_gib, "always", self.tile_tokens, "auto",
                          checkpoint_stride=self.force_stride or "auto", compute_bytes=self.dtype.itemsize,
                          optimizer=False, norm_tile_tokens=self.norm_tile, offload_states=self.offload_params,
                          host_pool=self.host_pool)
            self.offloaded, self.stride = chosen.offload_layers, chosen.checkpoint_stride
        gib = estimate(self.model_dims, length, 1, 1, self.dtype.itemsize, tiled_mlp_tokens=self.tile,
                       offload_layers=self.offloaded, optimizer=False, norm_tile_tokens=self.norm_tile,
                       offload_states=self.offload_params, checkpoint_stride=self.stride, host_pool=self.host_pool)
        from longctx.train.offload import CheckpointStore, HostPool, attach

        if self.offload_params:      # FSDP wraps the checkpoint wrappers: re-point them at a new store
            self.store = CheckpointStore()
            attach(self.wrappers, self.store, self.offloaded, self.stride)
        else:
            self.lm.model.layers = torch.nn.ModuleList(self.raw_layers)
            self.store = checkpoint_layers(self.lm.model.layers, self.offloaded, stride=self.stride)
        if self.host_pool and gib["host_pool_bytes"]:   # one exactly sized pinned buffer per length
            self.store.pool = HostPool(gib["host_pool_bytes"])
        return {"est_gib": round(gib["total"], 2), "offloaded": self.offloaded, "stride": self.stride,
                "host_pool": self.host_pool,
                "est_host_gib": float(f"{gib['host']:.3g}"), "est_phase": gib["phase"],
                "est_terms": " ".join(f"{k}={gib[k]:.1f}" for k in _TERMS if gib[k] >= 0.05)}

    def step(self, ids: torch.Tensor, labels: torch.Tensor, shifted: torch.Tensor | None = None,
             answers: int | None = None, keep_grads: bool = False) -> None:
        """One forward + backward; ``shifted``/``answers`` given by the fake-tensor run (no data there)."""
        from longctx.train.loss import shift_labels

        if shifted is None:
            shifted = shift_labels(labels)
            answers = max(int((shifted != -100).sum()), 1)
        if self.name == "hf":
            self.lm(input_ids=ids, labels=labels, use_cache=False).loss.backward()
        elif self.name == "alst":
            from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledFusedLogitsLoss

            def loss_fn(lm, x, y):
                logits = lm.lm_head(x).float()
                return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1),
                                                         reduction="sum")

            with self.offload_ctx():
                hidden = self.lm.model(input_ids=ids, use_cache=False).last_hidden_state
                shards = max(1, math.ceil(ids.shape[1] * self.dims["vocab_size"] * 4 / GIB))   # <= 1 GiB fp32 logits
                loss = TiledFusedLogitsLoss.apply(loss_fn, self.lm, hidden, shifted, None, shards,
                                                  [self.lm.lm_head.weight], "sum") / answers
                loss.backward()
        else:
            pos = torch.arange(ids.shape[1], device=ids.device)[None]
            loss, _, _ = self.model(ids, shifted, pos, loss_scale=1.0 / answers)
            loss.backward()
        if not keep_grads:
            for p in self.lm.parameters():
                p.grad = None

    def flops_per_token(self, length: int) -> float:
        d, layers, v = self.dims["hidden_size"], self.dims["num_hidden_layers"], self.dims["vocab_size"]
        head = ANSWER_FRACTION if self.name.startswith("ours") else 1.0
        return 6 * layers * self.model_dims.layer_params + 6 * head * v * d + 6 * layers * d * length

    def executed_flops_per_token(self, length: int) -> float:
        """What the GPU runs (for hardware FLOPs utilisation): the model FLOPs, plus each layer's
        forward again (activation checkpointing; the loss chunks too for ours), flash attention's
        backward at 2.5x its forward instead of 2x, and the tiled MLP's forward once more inside
        the layer's recompute (1.43-1.50x the model FLOPs at 128K, measured with FlopCounterMode)."""
        d, layers, v, i = (self.dims[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"))
        head = ANSWER_FRACTION if self.name.startswith("ours") else 1.0
        extra = 2 * layers * self.model_dims.layer_params + 2 * layers * d * length + layers * d * length
        if self.name.startswith("ours"):
            extra += 2 * head * v * d
        if self.tile:
            extra += 2 * 3 * d * i * layers
        return self.flops_per_token(length) + extra


def batch(length: int, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(0, vocab, (1, length), generator=g)
    labels = torch.where(torch.rand(1, length, generator=g) < ANSWER_FRACTION, ids, torch.full_like(ids, -100))
    return ids.to(device), labels.to(device)
