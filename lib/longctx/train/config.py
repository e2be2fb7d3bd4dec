"""Typed parameters of stage 3 (``params/*/03_train.yaml``, notebook ``03_train``).

A run is a list of :class:`Stage` s trained in order; each starts from the previous stage's final
weights with its own RoPE settings, samples, sequence length and parallel layout. Degrees that
depend on the launch (``dp = world_size / sp``, gradient accumulation) are derived at start-up
(:func:`layout`), never configured twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..core.config import bad, param
from .rope import RopeSettings

__all__ = ["TinyModel", "Stage", "TrainConfig", "Layout", "layout"]


@dataclass
class TinyModel:
    """A randomly initialised Llama built locally (``model: tiny``): tests and the demo profile."""

    hidden_size: int = param(64, "hidden width", min=8)
    intermediate_size: int = param(128, "MLP width", min=8)
    num_hidden_layers: int = param(2, "decoder layers", min=1)
    num_attention_heads: int = param(4, "query heads", min=1)
    num_key_value_heads: int = param(2, "KV heads (GQA groups)", min=1)
    vocab_size: int = param(128256, "vocabulary; Llama-3's 128256 so stage-2 token ids fit", min=2)


@dataclass
class Stage:
    """One step of the stepwise context extension."""

    name: str = param("4K", "stage name: its output folder, and its stage-2 sample file by default")
    samples: str = param("runs/demo/02_concatenate", "stage-2 output folder or .parquet file (relative to the root)")
    samples_stage: str = param("", "stage name inside a stage-2 folder (empty: this stage's name)")
    seq_len: int = param(4096, "longest sample in tokens; also the model's max_position_embeddings", min=2)
    rope: RopeSettings = param(RopeSettings(), "RoPE settings of this stage")
    sp: int = param(1, "Ulysses sequence-parallel degree (ranks sharing one sample)", min=1)
    nodes: int = param(1, "SLURM nodes for this stage (gpus_per_node GPUs each)", min=1)
    global_batch: int = param(1, "samples per optimizer step over all data-parallel ranks", min=1)
    epochs: int = param(1, "passes over the stage's samples (paper: 1)", min=1)
    max_steps: int = param(0, "stop the stage after this many optimizer steps (0: all epochs)", min=0)
    warmup_steps: int = param(0, "linear learning-rate warm-up steps", min=0)
    slurm_time: str = param("48:00:00", "SLURM time limit of this stage's job (HH:MM:SS)")

    def check(self) -> None:
        if "/" in self.name or not self.name:
            raise bad("name", f"must be a plain folder name, got {self.name!r}")


@dataclass
class TrainConfig:
    """Stage 3: long-context fine-tuning with stepwise RoPE scaling, Ulysses SP and FSDP."""

    profile: Literal["demo", "paper"] = param("demo", "demo: train here on CPU; paper: print SLURM commands + dry run")
    model: str = param("tiny", "'tiny' (built from `tiny`), a hub id or a local path of a Llama checkpoint")
    tiny: TinyModel = param(TinyModel(), "architecture of the 'tiny' model")
    stages: list[Stage] = param([Stage()], "stages, trained in order, each from the previous one's weights")
    output_dir: str = param("runs/demo/03_train", "checkpoints, logs and exports (relative to the root)")
    lr: float = param(6e-5, "peak AdamW learning rate (paper: 6e-5)", min=0.0)
    schedule: Literal["constant", "cosine", "linear"] = param("cosine", "decay after warm-up, per stage")
    min_lr_ratio: float = param(0.1, "final learning rate / peak (cosine and linear)", min=0.0, max=1.0)
    weight_decay: float = param(0.0, "AdamW weight decay", min=0.0)
    adam_beta1: float = param(0.9, "AdamW beta1", min=0.0, max=1.0)
    adam_beta2: float = param(0.95, "AdamW beta2", min=0.0, max=1.0)
    grad_clip: float = param(1.0, "clip the global gradient norm to this (0: off)", min=0.0)
    loss_chunk_tokens: int = param(1024, "answer tokens projected to the vocabulary at once", min=1)
    activation_checkpointing: bool = param(True, "recompute each decoder layer in backward")
    tiled_mlp: Literal["auto", "always", "never"] = param("auto", "run each MLP over sequence tiles recomputed in backward; "
                                                    "auto: where the memory estimate needs it")
    mlp_tile_tokens: int = param(8192, "tokens per MLP tile", min=1)
    norm_tile_tokens: int = param(8192, "tokens per RMSNorm tile: every RMSNorm runs tiled in fp32 without its "
                                  "tokens x hidden fp32 copies (longctx.train.tiled_norm); 0: transformers' eager norm",
                                  min=0)
    offload_checkpoints: Literal["auto", "all", "none"] = param(
        "auto", "keep layer checkpoints in pinned host memory; auto: the fewest layers the estimate needs")
    checkpoint_stride: Literal["auto"] | int = param(
        "auto", "of the offloaded layer checkpoints store every this-many-th only (1: all; 2: every other, half the "
        "host memory for one more layer forward per skipped layer, ~12 % of a step); the others' inputs are "
        "recomputed from the previous layer's in backward; auto: the smallest stride (up to 4) at which the host fits")
    host_pool: bool = param(True, "the offloaded layer checkpoints share one host buffer of exactly their size, "
                            "pinned once (cudaHostRegister) and reused every step; false: torch's caching host "
                            "allocator pins each in a power-of-two block (up to twice the bytes above 512K tokens)")
    offload_params: bool = param(False, "weights, gradients and AdamW state in host memory (FSDP2's CPUOffloadPolicy, "
                                 "one rank too): the GPU holds the layers being computed and their gradients in "
                                 "flight; the optimizer steps on the CPU. One GPU cannot hold an 8B model's fp32 "
                                 "weights + AdamW (>= 150 GiB) otherwise")
    host_memory_gb: float = param(1024.0, "host memory per node for offloaded checkpoints (GiB)", min=0.0)
    dtype: Literal["auto", "bfloat16", "float32"] = param("auto", "compute dtype; auto: bf16 on GPU, fp32 on CPU")
    checkpoint_every: int = param(50, "save a resumable checkpoint every this many steps", min=1)
    keep_checkpoints: int = param(2, "resumable checkpoints kept per stage (oldest deleted)", min=1)
    resume: bool = param(True, "continue a stage from its latest checkpoint")
    log_every: int = param(1, "print a log line every this many steps (the CSV gets every step)", min=1)
    tensorboard: bool = param(True, "also write TensorBoard event files beside each stage's train_log.csv")
    wandb_project: str = param("", "also log to this Weights & Biases project (extra 'wandb'; empty: off); "
                                   "one W&B run per stage, resumed across requeues")
    peak_flops_per_gpu: float = param(989e12, "nominal peak FLOP/s of one device, the MFU denominator "
                                      "(H100 SXM bf16 dense: 989e12; on CPU MFU is against this same figure)", min=1.0)
    monitor: bool = param(False, "notebook 03: plot the train_log.csv of every stage under output_dir (a cluster "
                          "run, running or done) and train or queue nothing")
    deadline_safety: float = param(1.5, "stop for a requeue when the time left before the job's end is less than this "
                                   "x (longest step + longest checkpoint save) measured", min=1.0)
    planning_mfu: float = param(0.3, "MFU the dry run assumes for its step-time estimate (hours, SLURM warning "
                                "margin)", min=0.001, max=1.0)
    checkpoint_write_gbps: float = param(2.0, "write speed of output_dir's file system the dry run assumes for a "
                                         "checkpoint save (GB/s)", min=0.001)
    seed: int = param(0, "seed of the tiny model's weights and of the sample order")
    gpus_per_node: int = param(8, "ranks per node: GPUs (paper: 8 H100), or CPU processes of a local run", min=1)
    gpu_memory_gb: float = param(80.0, "memory per GPU in GiB: the dry run's fit check and the tiling/offload plan", min=1.0)
    stop_after_steps: int = param(0, "testing: exit hard after this many steps of a run, as if killed (0: off)", min=0)
    export_hf: bool = param(False, "write each finished stage as a transformers checkpoint (save_pretrained)")

    def check(self) -> None:
        if not self.stages:
            raise bad("stages", "needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise bad("stages", f"stage names must be unique, got {names}")
        if self.offload_checkpoints == "all" and not self.activation_checkpointing:
            raise bad("offload_checkpoints", "offloads activation checkpoints: needs activation_checkpointing: true "
                      "(or offload_checkpoints: none)")

        if self.checkpoint_stride != "auto" and self.checkpoint_stride < 1:
            raise bad("checkpoint_stride", f"must be 'auto' or an int >= 1, got {self.checkpoint_stride}")

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")


@dataclass(frozen=True)
class Layout:
    """Degrees of one stage on ``world_size`` ranks."""

    world_size: int
    sp: int
    dp: int
    grad_accum: int


def layout(stage: Stage, world_size: int) -> Layout:
    """Derive dp and gradient accumulation; ValueError with the numbers when they do not fit."""
    if world_size % stage.sp:
        raise ValueError(f"stage {stage.name}: sp={stage.sp} does not divide world_size={world_size}")
    dp = world_size // stage.sp
    if stage.global_batch % dp:
        raise ValueError(f"stage {stage.name}: global_batch={stage.global_batch} is not a multiple of "
                         f"dp={dp} (world_size {world_size} / sp {stage.sp}); use a multiple of {dp}")
    return Layout(world_size, stage.sp, dp, stage.global_batch // dp)
