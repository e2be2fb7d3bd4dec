"""Stepwise RoPE scaling: per-stage rotary settings for a Llama-3.1 model, in the serving engine's precision.

Each training stage sets its own :class:`RopeSettings` (type, base ``theta``, ``precision``). They
are written into the Hugging Face config as transformers 5's ``rope_parameters`` (:func:`apply_rope`;
exports add transformers 4's ``rope_theta`` / ``rope_scaling``, :func:`legacy_rope_keys`), and the model's
rotary module is swapped for :class:`RotaryEmbedding`, which computes transformers'
``ROPE_INIT_FUNCTIONS`` frequencies in the stage's ``precision``:

* ``float32`` (default): bit for bit what transformers and vLLM compute when they serve the
  model (``inv_freq`` and the angles ``position * inv_freq`` in float32, same operation order).
  Float32 keeps only ~0.06 rad of an angle of ~1e6 rad, so these phases are *wrong* by up to
  ~0.045 rad at 1M positions, but they are the phases the model will see when served: a model
  trained on other phases is served on positions it never trained on.
* ``float64``: the mathematically exact phases (error under 1e-6 at 1M positions), for engines
  that compute them so, or for ablations. :func:`phase_gap` gives the largest angle difference
  between the two at a stage's length; the dry run prints it.
* No table is built: a rank computes cos/sin for exactly the positions it holds (its
  sequence-parallel shard), ``S/sp x head_dim`` values, whatever the global length; they are
  cast to the compute dtype at the end, as transformers does.

Supported types: ``default``, ``linear``, ``dynamic``, ``llama3``, ``yarn`` (transformers'
semantics, including YaRN's attention factor). ``dynamic`` needs the *global* sequence length;
under sequence parallelism it is taken as the maximum position over the sequence-parallel group.

Theta schedule of the paper profile (our choice; the paper does not publish one). We drop
Llama-3.1's piecewise ``llama3`` scaling and use plain RoPE (``type: default``) with the base
``theta`` given by the extrapolation bound of "Scaling Laws of RoPE-based Extrapolation"
(Liu et al., 2023), :func:`scaling_law_theta`::

    theta(L) = theta0 ** (ln(L / 2pi) / ln(L0 / 2pi)),   theta0 = 5e5, L0 = 8192

i.e. the base at which the critical dimension (the slowest one that completed a full turn within
``L0`` tokens at ``theta0``, Llama-3's pre-training length and base) again completes a full turn
within ``L`` tokens, so no dimension sees angles it never saw. It gives 1.5e8 at 180K (184,320),
5.0e8 at 350K, 1.56e9 at 650K and 3.58e9 at 1M (1,048,576): the same order as Gradient's
published 1M schedule (2.07e8 at 262K, 1.06e9 at 524K, 2.80e9 at 1048K) and above ProLong's
1.28e8 at 512K. Each stage starts from the previous stage's weights, so the jump between stages
is a ~3x change of base, which continued training absorbs (the idea of "stepwise" scaling).
Plain RoPE rather than ``llama3`` on top: the bound is derived for plain RoPE, and stacking
Llama-3.1's 8x low-frequency division on a 300x larger base would push the slow dimensions far
beyond anything seen. The ``llama3``/``yarn``/``linear``/``dynamic`` types stay available per
stage for ablations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .rope_settings import (  # noqa: F401  (offered here with the rest of RoPE)
    SERVING_PRECISION,
    Precision,
    RopeSettings,
    RopeType,
    legacy_rope_keys,
    rope_parameters,
)

__all__ = ["RopeSettings", "rope_parameters", "legacy_rope_keys", "apply_rope", "scaling_law_theta", "inv_freq",
           "inv_freq_float64", "cos_sin", "phase_gap", "RotaryEmbedding", "install_rope"]


def apply_rope(config, settings: RopeSettings, max_position_embeddings: int) -> None:
    """Write ``settings`` into a transformers config (in place) for a stage of that length.

    Only ``rope_parameters``: on transformers 5 ``config.rope_scaling`` is an alias of it, so the
    legacy keys go into the exported ``config.json`` instead (``checkpoint.export_hf``)."""
    config.max_position_embeddings = int(max_position_embeddings)
    config.rope_parameters = rope_parameters(settings)


def scaling_law_theta(target_len: int, base_theta: float = 5e5, base_len: int = 8192) -> float:
    """RoPE base for ``target_len`` tokens from the extrapolation bound (Liu et al., 2023)."""
    return base_theta ** (math.log(target_len / (2 * math.pi)) / math.log(base_len / (2 * math.pi)))


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def inv_freq(params: dict[str, Any], head_dim: int, max_position_embeddings: int, seq_len: int | None = None,
             dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (length ``dim/2``, in ``dtype``) and the cos/sin multiplier for ``params``.

    Same formulas *and operation order* as transformers' rope init functions, so ``float32``
    reproduces transformers' values bit for bit; ``seq_len`` matters for ``dynamic`` only.
    """
    kind = params.get("rope_type", "default")
    base = float(params["rope_theta"])
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    exponents = torch.arange(0, dim, 2, dtype=dtype) / dim
    scaling = 1.0
    if kind == "dynamic":
        factor = float(params["factor"])
        length = torch.tensor(max(seq_len or max_position_embeddings, max_position_embeddings), dtype=dtype)
        # a tensor like transformers' (whose seq_len is one): the adjusted base is rounded to dtype too
        base = base * ((factor * length / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    freq = 1.0 / base ** exponents
    if kind == "linear":
        freq = freq / float(params["factor"])
    elif kind == "llama3":
        factor = float(params["factor"])
        low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
        old = float(params["original_max_position_embeddings"])
        wavelen = 2 * math.pi / freq
        scaled = torch.where(wavelen > old / low, freq / factor, freq)
        smooth = (old / wavelen - low) / (high - low)
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        freq = torch.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    elif kind == "yarn":
        freq, scaling = _yarn(params, base, dim, max_position_embeddings, dtype)
    elif kind not in ("default", "dynamic"):
        raise ValueError(f"rope_type {kind!r} is not supported; use default, linear, dynamic, llama3 or yarn")
    return freq, scaling


def inv_freq_float64(params: dict[str, Any], head_dim: int, max_position_embeddings: int,
                     seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """:func:`inv_freq` in float64."""
    return inv_freq(params, head_dim, max_position_embeddings, seq_len, torch.float64)


def _yarn(params: dict[str, Any], base: float, dim: int, max_position_embeddings: int,
          dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    original = float(params["original_max_position_embeddings"])
    factor = params.get("factor") or max_position_embeddings / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = params.get("attention_factor")
    if attention is None:
        if params.get("mscale") and params.get("mscale_all_dim"):
            attention = mscale(factor, params["mscale"]) / mscale(factor, params["mscale_all_dim"])
        else:
            attention = mscale(factor)
    beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=dtype) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=dtype) / dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention)


def cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, scaling: float = 1.0,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, shape ``(*position_ids.shape, 2 * len(inv_freq))`` (transformers' half-split
    layout), with angles in ``inv_freq``'s dtype for exactly these positions, cast to ``dtype``."""
    angles = position_ids.to(inv_freq.dtype)[..., None] * inv_freq.to(position_ids.device)
    angles = torch.cat((angles, angles), dim=-1)
    return (angles.cos() * scaling).to(dtype), (angles.sin() * scaling).to(dtype)


def phase_gap(settings: RopeSettings, seq_len: int, head_dim: int = 128, window: int = 65536,
              serving: Precision = SERVING_PRECISION) -> float:
    """Largest angle difference (radians) between training's phases (``settings.precision``) and
    the serving engine's (float32, transformers / vLLM) over positions below ``seq_len``.

    Evaluated on the last ``window`` positions: the difference grows with the position
    (``position x`` the inverse frequencies' rounding), so the maximum lies there. 0 when
    training computes what the engine computes.
    """
    params = rope_parameters(settings)
    dtypes = {p: getattr(torch, p) for p in (settings.precision, serving)}
    freqs = {p: inv_freq(params, head_dim, seq_len, seq_len, d)[0] for p, d in dtypes.items()}
    positions = torch.arange(max(0, seq_len - window), seq_len)
    angle = {p: (positions.to(dtypes[p])[:, None] * freqs[p]).double() for p in dtypes}
    return float((angle[settings.precision] - angle[serving]).abs().max())


class RotaryEmbedding(nn.Module):
    """Drop-in for transformers' ``LlamaRotaryEmbedding``: ``forward(x, position_ids) -> (cos, sin)``.

    Frequencies are plain attributes in ``precision`` (not buffers), so ``model.to(bfloat16)``
    and FSDP leave them alone.
    """

    def __init__(self, config, precision: Precision = SERVING_PRECISION):
        super().__init__()
        self.params = dict(config.rope_parameters)
        self.head_dim = _head_dim(config)
        self.max_position_embeddings = int(config.max_position_embeddings)
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[precision]
        self.inv_freq, self.attention_scaling = inv_freq(
            self.params, self.head_dim, self.max_position_embeddings, dtype=self.dtype)
        self._on: dict[torch.device, torch.Tensor] = {}

    @property
    def inv_freq64(self) -> torch.Tensor:
        """The exact frequencies, whatever ``precision`` (for inspection)."""
        return inv_freq_float64(self.params, self.head_dim, self.max_position_embeddings)[0]

    def _frequencies(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, float]:
        if self.params.get("rope_type") == "dynamic":
            from . import dist

            longest = position_ids.max().to(torch.int64).reshape(1) + 1
            dist.all_reduce(longest, "max", group=dist.sp_group())  # the global length, not the shard's
            freq, scaling = inv_freq(self.params, self.head_dim, self.max_position_embeddings, int(longest),
                                     self.dtype)
            return freq.to(position_ids.device), scaling
        device = position_ids.device
        if device not in self._on:
            self._on[device] = self.inv_freq.to(device)
        return self._on[device], self.attention_scaling

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freq, scaling = self._frequencies(position_ids)
        return cos_sin(position_ids, freq, scaling, x.dtype)

    def extra_repr(self) -> str:
        return f"{self.params}, head_dim={self.head_dim}, precision={self.dtype}"


def install_rope(model, settings: RopeSettings | None = None, max_position_embeddings: int | None = None,
                 precision: Precision | None = None) -> RotaryEmbedding:
    """Apply ``settings`` (if given) to ``model.config`` and swap its rotary module for ours.

    ``precision``: default ``settings.precision``, else float32 (the serving engines').
    Works for transformers' Llama-family models (``model.get_decoder().rotary_emb``).
    """
    if settings is not None:
        apply_rope(model.config, settings, max_position_embeddings or model.config.max_position_embeddings)
    decoder = model.get_decoder()
    if not hasattr(decoder, "rotary_emb"):
        raise TypeError(f"{type(decoder).__name__} has no rotary_emb; install_rope supports Llama-family models")
    decoder.config = model.config
    rotary = RotaryEmbedding(model.config, precision or (settings.precision if settings else SERVING_PRECISION))
    decoder.rotary_emb = rotary
    return rotary
