"""Our RoPE vs transformers' RoPE vs an independent float64 reference, up to 1M positions.

Tolerances (stated, per element):
* ``precision: float32`` (the default): cos/sin equal transformers' ``LlamaRotaryEmbedding``
  exactly (atol 0), i.e. what the model sees when transformers or vLLM serve it;
* inverse frequencies: ours vs transformers' rope init functions, rtol 1e-6 (transformers
  computes them in float32);
* cos/sin, ours vs the float64 reference: atol 1e-6 at every position up to 1,048,575;
* cos/sin, transformers vs the float64 reference: ``2e-6 + 1.2e-7 * position`` (float32 angles
  lose ~1 ulp of ``position * inv_freq``, plus the float32 rounding of ``inv_freq`` itself): at
  position 4095 this allows 5e-4, at 1M 0.13; transformers measures up to 7e-8 * position
  (0.045 at 1M): the phase gap between a float64-trained model and its serving engine, which
  :func:`longctx.train.rope.phase_gap` reports (checked against transformers' measured angles).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from longctx.train import rope
from longctx.core.config import ParamsError, from_mapping

HEAD_DIM = 128
POSITIONS = np.array([0, 1, 7, 4095, 8191, 65_537, 131_071, 262_144, 524_287, 999_983, 1_048_575])

SETTINGS = {
    "default": rope.RopeSettings(type="default", theta=3.58e9),
    "linear": rope.RopeSettings(type="linear", theta=5e5, factor=8.0),
    "dynamic": rope.RopeSettings(type="dynamic", theta=5e5, factor=4.0),
    "llama3": rope.RopeSettings(type="llama3", theta=5e5, factor=8.0),
    "yarn": rope.RopeSettings(type="yarn", theta=5e5, factor=16.0, original_max_position_embeddings=65536),
}


def reference_inv_freq(s: rope.RopeSettings, mpe: int, seq_len: int) -> tuple[np.ndarray, float]:
    """Textbook formulas in numpy float64, written independently of longctx.train.rope."""
    d = HEAD_DIM
    i = np.arange(0, d, 2, dtype=np.float64) / d
    if s.type == "default":
        return s.theta ** -i, 1.0
    if s.type == "linear":
        return s.theta ** -i / s.factor, 1.0
    if s.type == "dynamic":
        length = max(seq_len, mpe)
        base = s.theta * (s.factor * length / mpe - (s.factor - 1)) ** (d / (d - 2))
        return base ** -i, 1.0
    if s.type == "llama3":
        inv = s.theta ** -i
        wl = 2 * np.pi / inv
        lo_wl = s.original_max_position_embeddings / s.low_freq_factor
        hi_wl = s.original_max_position_embeddings / s.high_freq_factor
        smooth = (s.original_max_position_embeddings / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        out = np.where(wl < hi_wl, inv, np.where(wl > lo_wl, inv / s.factor, (1 - smooth) * inv / s.factor + smooth * inv))
        return out, 1.0
    if s.type == "yarn":
        def dim_for(rot):
            return d * math.log(s.original_max_position_embeddings / (rot * 2 * math.pi)) / (2 * math.log(s.theta))
        lo, hi = max(math.floor(dim_for(s.beta_fast)), 0), min(math.ceil(dim_for(s.beta_slow)), d - 1)
        ramp = np.clip((np.arange(d // 2) - lo) / (hi - lo), 0, 1)
        keep = 1 - ramp
        inv = s.theta ** -i
        return inv / s.factor * (1 - keep) + inv * keep, 0.1 * math.log(s.factor) + 1.0
    raise AssertionError(s.type)


def hf_config(s: rope.RopeSettings, mpe: int):
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=HEAD_DIM * 4, num_attention_heads=4, num_key_value_heads=1,
                         num_hidden_layers=1, intermediate_size=8, vocab_size=8)
    rope.apply_rope(config, s, mpe)
    return config


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_rope_matches_transformers_and_float64_reference(kind):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    s = SETTINGS[kind]
    mpe = 131_072 if kind == "dynamic" else 1_048_576
    config = hf_config(s, mpe)
    assert config.rope_parameters["rope_type"] == kind and config.rope_parameters["rope_theta"] == s.theta
    ours = rope.RotaryEmbedding(config, "float64")
    served = rope.RotaryEmbedding(config)             # default precision: the serving engines' float32
    seq_len = int(POSITIONS.max()) + 1
    if kind == "default":
        hf_inv, hf_scale = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        hf_inv, hf_scale = ROPE_INIT_FUNCTIONS[kind](config, None, seq_len=seq_len)
    ref_inv, ref_scale = reference_inv_freq(s, mpe, seq_len)
    our_inv, our_scale = rope.inv_freq_float64(config.rope_parameters, HEAD_DIM, mpe, seq_len=seq_len)

    np.testing.assert_allclose(our_inv.numpy(), ref_inv, rtol=1e-12)
    np.testing.assert_allclose(hf_inv.double().numpy(), ref_inv, rtol=1e-6)
    assert our_scale == pytest.approx(ref_scale, rel=1e-12) and hf_scale == pytest.approx(ref_scale, rel=1e-7)

    pos = torch.tensor(POSITIONS)[None]
    angles = POSITIONS[:, None].astype(np.float64) * ref_inv[None]
    angles = np.concatenate([angles, angles], axis=-1)
    ref_cos, ref_sin = np.cos(angles) * ref_scale, np.sin(angles) * ref_scale
    cos, sin = ours(torch.zeros(1), pos)
    assert cos.dtype == torch.float32 and cos.shape == (1, len(POSITIONS), HEAD_DIM)
    np.testing.assert_allclose(cos[0].double().numpy(), ref_cos, atol=1e-6, rtol=0)
    np.testing.assert_allclose(sin[0].double().numpy(), ref_sin, atol=1e-6, rtol=0)

    hf_cos, hf_sin = LlamaRotaryEmbedding(config)(torch.zeros(1), pos)
    for mine, theirs in zip(served(torch.zeros(1), pos), (hf_cos, hf_sin)):   # bit for bit at every position
        torch.testing.assert_close(mine, theirs, atol=0, rtol=0)
    bound = (2e-6 + 1.2e-7 * POSITIONS)[:, None]
    for hf, ref in ((hf_cos, ref_cos), (hf_sin, ref_sin)):
        err = np.abs(hf[0].double().numpy() - ref)
        assert (err <= bound).all(), f"{kind}: transformers off by {err.max():.3g}"


def test_sharded_positions_need_no_table():
    """A rank holding positions 999_000..999_999 gets exactly 1000 rows, equal to the same rows
    of a computation over the whole range."""
    config = hf_config(SETTINGS["default"], 1_048_576)
    ours = rope.RotaryEmbedding(config)
    shard = torch.arange(999_000, 1_000_000)[None]
    cos, _ = ours(torch.zeros(1, dtype=torch.bfloat16), shard)
    assert cos.shape == (1, 1000, HEAD_DIM) and cos.dtype == torch.bfloat16
    full = torch.arange(990_000, 1_000_000)[None]
    torch.testing.assert_close(cos, ours(torch.zeros(1, dtype=torch.bfloat16), full)[0][:, -1000:], atol=0, rtol=0)


def test_install_rope_keeps_model_outputs_at_short_range():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    rope.apply_rope(config, rope.RopeSettings(type="llama3", theta=5e5), 131_072)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 64, (1, 50))
    before = model(ids).logits
    rope.install_rope(model)
    torch.testing.assert_close(model(ids).logits, before, atol=1e-5, rtol=1e-5)
    rope.install_rope(model, rope.RopeSettings(type="default", theta=1.5e8), 184_320)
    assert model.config.rope_parameters == {"rope_type": "default", "rope_theta": 1.5e8}
    assert model.config.max_position_embeddings == 184_320
    slowest = model.get_decoder().rotary_emb.inv_freq64[-1].item()
    assert slowest == pytest.approx(1.5e8 ** (-6 / 8), rel=1e-12)   # head_dim 8: exponents 0, 2/8, 4/8, 6/8


def test_phase_gap_equals_the_measured_gap_to_transformers():
    """phase_gap(float64 training) is the largest angle difference to transformers' float32 RoPE,
    measured here from its cos/sin (atan2) on the last 4,096 positions below 1M; float32
    training has no gap."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    exact = rope.RopeSettings(type="default", theta=3.58e9, precision="float64")
    n = 1_048_576
    config = hf_config(exact, n)
    pos = torch.arange(n - 4096, n)[None]
    cos, sin = LlamaRotaryEmbedding(config)(torch.zeros(1), pos)
    served = torch.atan2(sin[0].double(), cos[0].double())[:, :HEAD_DIM // 2]
    ref_inv, _ = reference_inv_freq(exact, n, n)
    true = pos[0].double().numpy()[:, None] * ref_inv[None]
    measured = np.abs(np.angle(np.exp(1j * (served.numpy() - true)))).max()     # wrapped to [-pi, pi]
    gap = rope.phase_gap(exact, n, HEAD_DIM, window=4096)
    assert 0.01 < gap < 0.1 and gap == pytest.approx(measured, abs=2e-4)
    assert rope.phase_gap(rope.RopeSettings(type="default", theta=3.58e9), n, HEAD_DIM) == 0.0


def test_scaling_law_schedule_and_settings_validation():
    # the paper profile's schedule (params/paper/03_train.yaml), rounded to two digits
    assert [round(rope.scaling_law_theta(n), -7) for n in (184_320, 358_400, 665_600, 1_048_576)] == \
        [1.5e8, 5.0e8, 1.56e9, 3.58e9]
    assert rope.scaling_law_theta(8192) == pytest.approx(5e5)
    with pytest.raises(ParamsError, match="high_freq_factor"):
        from_mapping(rope.RopeSettings, {"type": "llama3", "low_freq_factor": 4.0, "high_freq_factor": 1.0})
    with pytest.raises(ParamsError, match="expected one of"):
        from_mapping(rope.RopeSettings, {"type": "ntk"})
