"""Tiled RMSNorm equals transformers' ``LlamaRMSNorm``: forward bitwise, gradients to rounding.

References: the ``LlamaRMSNorm`` module itself (fp32 and bf16: it computes in fp32), and for
fp64 the same formula with fp64 inside (transformers' module casts fp64 inputs down to fp32, so
it is no fp64 reference). Tolerances: fp64 1e-12, fp32 1e-6 (max abs difference, relative to the largest entry where
a gradient sums many tokens). The whole
model: tiled norms + tiled MLP + offloaded checkpoints against the plain transformers model;
under FSDP2 + Ulysses sp=2 in ``tests/test_tiling_offload.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from longctx.train.offload import checkpoint_layers
from longctx.train.tiled_mlp import tile_mlps
from longctx.train.tiled_norm import rms_norm_tiled, tile_norms

TOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def _fp64_reference(self, hidden_states):
    """``LlamaRMSNorm.forward`` with the upcast to fp64 instead of fp32."""
    input_dtype = hidden_states.dtype
    h = hidden_states.to(torch.float64)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight * h.to(input_dtype)


def _norm(dtype, d=48):
    torch.manual_seed(0)
    norm = LlamaRMSNorm(d, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(d) * 0.5 + 1)
    return norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tile", [7, 50, 1000])
def test_forward_is_bitwise_the_transformers_norm(dtype, tile):
    norm = _norm(dtype)
    x = (torch.randn(2, 25, 48, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    got = rms_norm_tiled(x, norm.weight, norm.variance_epsilon, tile)
    assert got.dtype == norm(x).dtype and got.shape == x.shape
    torch.testing.assert_close(got, norm(x), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_gradients_match_autograd(dtype):
    norm = _norm(dtype)
    if dtype == torch.float64:
        norm.forward = _fp64_reference.__get__(norm)
    x = (torch.randn(3, 17, 48, generator=torch.Generator().manual_seed(2)) * 2).to(dtype).requires_grad_()
    grad = torch.randn(3, 17, 48, generator=torch.Generator().manual_seed(3)).to(dtype)
    ref_x, ref_w = torch.autograd.grad(norm(x), (x, norm.weight), grad)
    got_x, got_w = torch.autograd.grad(rms_norm_tiled(x, norm.weight, norm.variance_epsilon, 5), (x, norm.weight), grad)
    for got, ref in ((got_x, ref_x), (got_w, ref_w)):      # relative to the largest entry: dw sums 51 tokens
        assert (got - ref).abs().max() <= TOL[dtype] * ref.abs().max()


def test_bf16_gradients_are_close_and_temporaries_are_per_tile():
    norm = _norm(torch.bfloat16)
    x = torch.randn(1, 64, 48, generator=torch.Generator().manual_seed(4)).bfloat16().requires_grad_()
    ref = torch.autograd.grad(norm(x).float().square().sum(), (x, norm.weight))
    got = torch.autograd.grad(rms_norm_tiled(x, norm.weight, norm.variance_epsilon, 16).float().square().sum(),
                              (x, norm.weight))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g.float(), r.float(), atol=0.05, rtol=0.02)
    with pytest.raises(ValueError, match="tile_tokens must be >= 1"):
        rms_norm_tiled(x, norm.weight, 1e-5, 0)


def _tiny(dtype, layers=3):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape) + 0.5)                  # not all ones: the weight gradient matters
    return model


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_whole_model_gradients_with_tiled_norms_mlp_and_offload(dtype):
    base = _tiny(dtype)
    if dtype == torch.float64:
        for m in base.modules():
            if isinstance(m, LlamaRMSNorm):
                m.forward = _fp64_reference.__get__(m)
    ids = torch.randint(0, 96, (1, 50), generator=torch.Generator().manual_seed(1))
    ref_model = copy.deepcopy(base)
    ref_loss = ref_model(input_ids=ids, labels=ids).loss
    ref_loss.backward()
    model = copy.deepcopy(base)
    assert tile_norms(model, 7) == 2 * 3 + 1                      # every decoder norm and the final one
    tile_mlps(model.model.layers, 9)
    checkpoint_layers(model.model.layers, 2)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.testing.assert_close(loss, ref_loss, atol=TOL[dtype], rtol=0)
    ref = {n: p.grad for n, p in ref_model.named_parameters()}
    got = {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in model.named_parameters()}
    assert sorted(got) == sorted(ref)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=TOL[dtype], rtol=0, msg=lambda m: f"{name}: {m}")
    assert list(model.state_dict()) == [k for k in model.state_dict()]   # names unchanged by the norms


def test_model_without_rms_norm_is_refused():
    with pytest.raises(TypeError, match="has no RMSNorm"):
        tile_norms(torch.nn.Linear(3, 3))
