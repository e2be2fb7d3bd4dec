"""Model FLOPs of a training step, model FLOPs utilisation (MFU), and the step-time estimate.

Counted the way PaLM (Chowdhery et al., 2022, appendix B) and torchtitan count them: matrix
multiplies only, 2 FLOPs per multiply-add, backward twice the forward (so 6 per parameter and
token), the recomputation of activation checkpointing *not* counted (that would be hardware FLOPs
utilisation). With ``L`` layers, hidden ``d``, MLP width ``I``, ``Hq``/``Hk`` heads of size ``D``,
vocabulary ``V``, ``T`` real (unpadded) tokens in the step, ``A`` of them answer tokens and samples
of lengths ``s_i``:

* decoder weights: ``6 T L (d D (2 Hq + 2 Hk) + 3 d I)``;
* output head: ``6 A V d``. Our loss projects only answer tokens to the vocabulary
  (``longctx.train.loss``), so the head is counted on them, not on every token;
* causal attention, scores and weighted sum: ``6 L Hq D sum(s_i^2)``, half of the full
  ``12 L Hq D s^2`` because the upper triangle is masked.

The input embedding is a lookup, not a multiply. MFU is these FLOPs divided by the step's time
and ``world_size x peak_flops_per_gpu``, a stated nominal peak (H100 SXM, bf16 dense: 989e12).
On CPU the same nominal figure is used, so MFU there only says the machinery works.
"""

from __future__ import annotations

from .memory import ModelDims

__all__ = ["H100_BF16_FLOPS", "step_flops", "mfu", "sample_step_flops", "checkpoint_gb"]

H100_BF16_FLOPS = 989e12   # NVIDIA H100 SXM, dense bf16 tensor cores


def step_flops(dims: ModelDims, tokens: float, answer_tokens: float, sum_sq_lengths: float) -> float:
    """Model FLOPs of one optimizer step (forward + backward) over all ranks."""
    layer = dims.hidden * dims.head_dim * (2 * dims.heads + 2 * dims.kv_heads) + 3 * dims.hidden * dims.intermediate
    return (6.0 * tokens * dims.layers * layer + 6.0 * answer_tokens * dims.vocab * dims.hidden
            + 6.0 * dims.layers * dims.heads * dims.head_dim * sum_sq_lengths)


def mfu(flops: float, step_s: float, world_size: int, peak_flops_per_gpu: float) -> float:
    """Fraction of ``world_size`` devices' nominal peak that ``flops`` in ``step_s`` seconds is."""
    return flops / (step_s * world_size * peak_flops_per_gpu) if step_s > 0 else 0.0


def sample_step_flops(dims: ModelDims, seq_len: int, global_batch: int, answer_fraction: float = 0.1) -> float:
    """FLOPs of a step of ``global_batch`` samples of ``seq_len`` tokens, ``answer_fraction`` of
    them answers (the dry run's planning figure; stage-2 samples are close to full length)."""
    tokens = float(seq_len) * global_batch
    return step_flops(dims, tokens, tokens * answer_fraction, float(seq_len) ** 2 * global_batch)


def checkpoint_gb(dims: ModelDims) -> float:
    """Size of a resumable checkpoint in GB (1e9 bytes): fp32 weights and AdamW's two fp32 moments."""
    return 12 * dims.params / 1e9
