"""Rotary settings of a stage, without torch: :class:`RopeSettings` and its config keys.

Split from :mod:`longctx.train.rope` so that the evaluation's parameters (a RoPE override for a
served baseline) and the evaluation client load from the base install, which has no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..core.config import bad, param

__all__ = ["RopeSettings", "RopeType", "Precision", "SERVING_PRECISION", "rope_parameters", "legacy_rope_keys"]

RopeType = Literal["default", "linear", "dynamic", "llama3", "yarn"]
Precision = Literal["float32", "float64"]
SERVING_PRECISION = "float32"   # transformers' LlamaRotaryEmbedding and vLLM's RotaryEmbedding


@dataclass
class RopeSettings:
    """Rotary position settings of one stage (keys follow transformers' ``rope_parameters``)."""

    type: RopeType = param("llama3", "rope_type: default, linear, dynamic, llama3 (Llama-3.1's own) or yarn")
    theta: float = param(500000.0, "base wavelength rope_theta (Llama-3.1: 5e5)", min=1.0)
    factor: float = param(8.0, "scaling factor for linear/dynamic/llama3/yarn (Llama-3.1: 8)", min=1.0)
    original_max_position_embeddings: int = param(
        8192, "pre-training context the llama3/yarn scaling refers to (Llama-3.1: 8192)", min=1)
    low_freq_factor: float = param(1.0, "llama3: wavelengths above original/low_freq_factor are scaled fully")
    high_freq_factor: float = param(4.0, "llama3: wavelengths below original/high_freq_factor are kept")
    beta_fast: float = param(32.0, "yarn: rotations bounding the extrapolated (kept) dimensions")
    beta_slow: float = param(1.0, "yarn: rotations bounding the interpolated (scaled) dimensions")
    attention_factor: float | None = param(None, "yarn: cos/sin multiplier; null = 0.1 ln(factor) + 1")
    precision: Precision = param("float32", "dtype of inv_freq and the phases: float32 = what transformers and "
                                 "vLLM compute when serving (default), float64 = exact (phase_gap apart at 1M)")

    def check(self) -> None:
        if self.type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise bad("high_freq_factor", f"must exceed low_freq_factor={self.low_freq_factor}, "
                      f"got {self.high_freq_factor}")
        if self.type == "yarn" and self.beta_fast <= self.beta_slow:
            raise bad("beta_fast", f"must exceed beta_slow={self.beta_slow}, got {self.beta_fast}")


def rope_parameters(settings: RopeSettings) -> dict[str, Any]:
    """``settings`` as a transformers-5 ``rope_parameters`` dict (only the keys its type uses)."""
    out: dict[str, Any] = {"rope_type": settings.type, "rope_theta": float(settings.theta)}
    if settings.type in ("linear", "dynamic", "llama3", "yarn"):
        out["factor"] = float(settings.factor)
    if settings.type in ("llama3", "yarn"):
        out["original_max_position_embeddings"] = int(settings.original_max_position_embeddings)
    if settings.type == "llama3":
        out["low_freq_factor"] = float(settings.low_freq_factor)
        out["high_freq_factor"] = float(settings.high_freq_factor)
    if settings.type == "yarn":
        out["beta_fast"] = float(settings.beta_fast)
        out["beta_slow"] = float(settings.beta_slow)
        if settings.attention_factor is not None:
            out["attention_factor"] = float(settings.attention_factor)
    return out


def legacy_rope_keys(params: dict[str, Any]) -> dict[str, Any]:
    """The same RoPE as transformers 4.x config keys: ``rope_theta`` and ``rope_scaling`` (None for
    plain RoPE; else the scaling keys with their ``rope_type``, read since transformers 4.43). vLLM and
    other serving stacks read these; without them transformers 4 loads ``rope_theta = 10000``."""
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if scaling.get("rope_type", "default") == "default":
        return {"rope_theta": float(params["rope_theta"]), "rope_scaling": None}
    return {"rope_theta": float(params["rope_theta"]), "rope_scaling": scaling}
