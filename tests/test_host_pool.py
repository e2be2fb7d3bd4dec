"""One host buffer for the offloaded layer checkpoints (``longctx.train.host_pool.HostPool``).

Torch's caching host allocator pins each layer input in a power-of-two block; the pool holds them
all in one buffer of exactly their bytes, allocated once and sliced per layer in the order they are
packed, reused every step. On CPU the buffer is a plain tensor with the same slicing (on CUDA it is
page-locked once with ``cudaHostRegister``). Checked: the slices are views of the one buffer, the
gradients are those without the pool (bitwise: the bytes only move), the buffer comes back empty
after backward and serves the next step, a full pool falls back with a warning, the tracker and the
estimate count its exact bytes, and the plan reaches longer lengths with it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from longctx.train import memtrack
from longctx.train.memory import GIB, KNOWN, dims_from_config, estimate, plan
from longctx.train.offload import CheckpointStore, HostPool, checkpoint_layers

LLAMA_8B = KNOWN["meta-llama/Llama-3.1-8B-Instruct"]
TOKENS = 37                      # 37 x 32 x 4 = 4736 bytes per layer input: slices padded to 512-byte boundaries


def tiny_llama(layers: int = 5) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def grads(model, ids):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), out


@pytest.mark.parametrize("stride", [1, 2])
def test_pool_holds_the_inputs_at_their_size_and_serves_every_step(stride):
    base = tiny_llama()
    ids = torch.randint(0, 96, (1, TOKENS), generator=torch.Generator().manual_seed(1))
    ref_loss, ref = grads(checkpoint_layers_copy(base, stride, pool=False)[0], ids)
    model, store = checkpoint_layers_copy(base, stride, pool=True)
    pool, stored = store.pool, 5 if stride == 1 else 3
    assert pool.capacity == stored * 5120 == estimate(dims_from_config(base.config), TOKENS, 1, 1, 4, offload_layers=5,
                                                      optimizer=False, checkpoint_stride=stride,
                                                      host_pool=True)["host_pool_bytes"]
    loss = model(input_ids=ids, labels=ids).loss
    assert (pool.live, pool.offset) == (stored, pool.capacity) and store.host_bytes == stored * 4736
    first = pool.buffer.data_ptr()
    loss.backward()
    assert (pool.live, pool.offset, pool.misses) == (0, 0, 0)          # every slice back after backward
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.testing.assert_close(loss.detach(), ref_loss, atol=0, rtol=0)
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, atol=0, rtol=0, msg=lambda m: f"{name}: {m}")
    model.zero_grad(set_to_none=True)
    grads(model, ids)                                                  # the next step: the same buffer, no miss
    assert pool.buffer.data_ptr() == first and pool.misses == 0 and pool.offset == 0


def checkpoint_layers_copy(base, stride: int, pool: bool):
    model = copy.deepcopy(base)
    store = CheckpointStore()
    if pool:
        dims = dims_from_config(base.config)
        store.pool = HostPool(estimate(dims, TOKENS, 1, 1, 4, offload_layers=5, optimizer=False,
                                       checkpoint_stride=stride, host_pool=True)["host_pool_bytes"])
    return model, checkpoint_layers(model.model.layers, 5, store, stride=stride)


def test_slices_are_views_of_the_one_buffer():
    pool = HostPool(2 * 512 + 100)
    a = pool.take(torch.Size([3, 5]), torch.float32, False, _allocations)
    b = pool.take(torch.Size([7]), torch.float64, False, _allocations)
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() == pool.buffer.data_ptr()
    assert b.data_ptr() - a.data_ptr() == 512 and pool.offset == 1024        # 60 bytes, padded to 512
    with pytest.warns(RuntimeWarning, match="host pool of 1124 bytes is full"):
        assert pool.take(torch.Size([26]), torch.float32, False, _allocations) is None   # 104 > 100 left
    assert pool.misses == 1


def _allocations(exact: bool = False):
    import contextlib

    return contextlib.nullcontext()


def test_a_full_pool_falls_back_to_separate_copies():
    base = tiny_llama(layers=3)
    ids = torch.randint(0, 96, (1, TOKENS), generator=torch.Generator().manual_seed(2))
    reference = copy.deepcopy(base)
    checkpoint_layers(reference.model.layers, 3)
    _, ref = grads(reference, ids)
    model = copy.deepcopy(base)
    store = CheckpointStore(pool=HostPool(5120))                 # room for one of three inputs
    checkpoint_layers(model.model.layers, 3, store)
    with pytest.warns(RuntimeWarning, match="is full"):
        _, got = grads(model, ids)
    assert store.pool.misses == 2 and store.pool.live == 0
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, atol=0, rtol=0, msg=lambda m: f"{name}: {m}")


def test_tracker_counts_the_pool_at_its_size():
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    tokens = 40                                  # 7680 bytes per input: 8192 each as power-of-two blocks
    with memtrack.fake_mode() as mode:
        model = LlamaForCausalLM(config)
        store = CheckpointStore(pool=HostPool(3 * 7680))
        checkpoint_layers(model.model.layers, 3, store)
        ids = mode.from_tensor(torch.randint(0, 64, (1, tokens)))
        result = memtrack.track(lambda: model(input_ids=ids, labels=ids).loss.backward(), list(model.parameters()),
                                stores=[store])
    assert result.host == result.host_pinned == 3 * 7680
    gib = estimate(dims_from_config(config), tokens, 1, 1, 4, offload_layers=3, optimizer=False, host_pool=True)
    assert gib["host"] * GIB == 3 * 7680 and gib["host_pool_bytes"] == 3 * 7680
    assert estimate(dims_from_config(config), tokens, 1, 1, 4, offload_layers=3, optimizer=False)["host"] * GIB == 3 * 8192


def test_plan_reaches_1_2m_on_an_h200_with_256_gib_of_host():
    """1.2M tokens (1,245,184), forward + backward, weights on the host: with every other checkpoint
    stored and the pool 160 GiB of host; with torch's power-of-two blocks the same plan needs 16 GiB
    blocks for 9.5 GiB inputs and does not fit 256 GiB (stride 3 would)."""
    kw = dict(optimizer=False, norm_tile_tokens=65536, offload_states=True)
    pooled = plan(LLAMA_8B, 1245184, 1, 1, 133.4, 256, "always", 16384, "auto", checkpoint_stride="auto",
                  host_pool=True, **kw)
    assert pooled.fits and pooled.checkpoint_stride == 2
    blocks = plan(LLAMA_8B, 1245184, 1, 1, 133.4, 256, "always", 16384, "auto", checkpoint_stride=2, **kw)
    assert blocks.fits_gpu and not blocks.fits_host
    per_layer = 1245184 * 4096 * 2
    assert pooled.gib["host_checkpoints"] * GIB == pooled.stored_layers * per_layer          # exact bytes
    assert blocks.gib["host_checkpoints"] * GIB == blocks.stored_layers * 16 * GIB           # 9.5 -> 16 GiB
