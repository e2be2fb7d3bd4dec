"""Answer-only chunked loss: equals the HF model's own loss and gradients, at sp 1, 2 and 4.

Tiny random-weight Llama, float32, CPU. Tolerances: loss atol 1e-5 / rtol 1e-5; parameter
gradients atol 1e-5 / rtol 1e-4 (sums over tokens run in another order when sharded).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import spawned_worlds
from longctx.train import dist, loss, rope, ulysses

LOSS_TOL = dict(atol=1e-5, rtol=1e-5)
GRAD_TOL = dict(atol=1e-5, rtol=1e-4)


def tiny_llama(num_kv_heads=2, vocab=96, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=num_kv_heads, max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def make_batch(n, vocab=96, answer_fraction=0.3, seed=0, packed=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (1, n), generator=g)
    labels = torch.where(torch.rand(1, n, generator=g) < answer_fraction, ids, torch.full_like(ids, -100))
    pos = torch.arange(n)[None]
    if packed:
        cut = n // 2
        pos = torch.cat([torch.arange(cut), torch.arange(n - cut)])[None]
        labels[:, 0] = labels[:, cut] = -100      # a document's first token is never a target (stage 2: BOS)
    return ids, labels, pos


def hf_loss_and_grads(model, ids, labels, pos):
    model.zero_grad()
    out = model(input_ids=ids, labels=labels, position_ids=pos, use_cache=False)  # a cache turns off packed-document masking
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------- single process


def test_shift_labels_respects_documents():
    labels = torch.tensor([[10, 11, 12, 13, 14, 15]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 2]])
    assert loss.shift_labels(labels).tolist() == [[11, 12, 13, 14, 15, -100]]
    assert loss.shift_labels(labels, pos).tolist() == [[11, 12, -100, 14, 15, -100]]


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_loss_equals_hf_single_process(chunk):
    model = tiny_llama()
    ids, labels, pos = make_batch(41)
    ref_loss, ref_grads = hf_loss_and_grads(model, ids, labels, pos)
    wrapped = loss.AnswerOnlyLM(model, chunk_tokens=chunk)
    model.zero_grad()
    shifted = loss.shift_labels(labels)
    count = loss.global_answer_tokens(shifted)
    value, _, n = wrapped(ids, shifted, pos, loss_scale=1.0 / count)
    value.backward()
    assert n == count == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(value.detach(), ref_loss, **LOSS_TOL)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], **GRAD_TOL, msg=name)


def test_float64_loss_stays_float64():
    """A float64 run is checkable to ~1e-12: the chunked loss must not round logits to fp32."""
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(50, 16, dtype=torch.float64, generator=g)
    weight = torch.randn(300, 16, dtype=torch.float64, generator=g) * 4
    labels = torch.randint(0, 300, (50,), generator=g)
    labels[::3] = -100
    total, n = loss.answer_loss_sum(hidden, weight, labels, chunk_tokens=7)
    keep = labels != -100
    reference = torch.nn.functional.cross_entropy(hidden[keep] @ weight.t(), labels[keep], reduction="sum")
    assert total.dtype == torch.float64 and n == int(keep.sum())
    torch.testing.assert_close(total, reference, atol=1e-12, rtol=1e-13)
    bf16, _ = loss.answer_loss_sum(hidden.bfloat16(), weight.bfloat16(), labels, chunk_tokens=7)
    assert bf16.dtype == torch.float32             # half-precision logits are still upcast


def test_no_answer_tokens_gives_zero_not_nan():
    model = tiny_llama()
    ids, _, pos = make_batch(16)
    labels = torch.full_like(ids, -100)
    value, _, n = loss.AnswerOnlyLM(model)(ids, labels, pos, loss_scale=1.0)
    value.backward()
    assert n == 0 and value.item() == 0.0
    assert all(torch.isfinite(p.grad).all() and (p.grad == 0).all() for p in model.parameters())


def test_chunked_loss_never_builds_full_logits():
    """The peak extra memory is one chunk of logits: checked by counting saved tensors' sizes."""
    hidden = torch.randn(4096, 16, requires_grad=True)
    weight = torch.randn(1000, 16, requires_grad=True)
    labels = torch.full((4096,), -100)
    labels[::10] = 3                                  # 10% answer tokens
    biggest = []

    def pack(t):
        biggest.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, n = loss.answer_loss_sum(hidden, weight, labels, chunk_tokens=64)
    total.backward()
    assert n == 410
    assert max(biggest) < 4096 * 1000 / 10           # nothing saved is near tokens x vocab
    assert math.isfinite(total.item())


# --------------------------------------------------------------------------- sequence parallel


def _sp_worker(cases):
    par = dist.init(sp=int(__import__("os").environ["WORLD_SIZE"]))
    return [_sp_case(par, *case) for case in cases]


def _sp_case(par, n, packed, answer_fraction):
    model = tiny_llama(num_kv_heads=2)
    ids, labels, pos = make_batch(n, answer_fraction=answer_fraction, seed=n, packed=packed)
    if answer_fraction == 0:
        labels[:] = -100
    ref_loss, ref_grads = hf_loss_and_grads(model, ids, labels, pos)

    sp_model = copy.deepcopy(model)
    ulysses.enable(sp_model)
    rope.install_rope(sp_model)                      # float64 RoPE of the same settings
    wrapped = loss.AnswerOnlyLM(sp_model, chunk_tokens=5)
    shifted = loss.shift_labels(labels, pos)
    batch = ulysses.shard_inputs({"input_ids": ids, "labels": shifted, "position_ids": pos})
    count = loss.global_answer_tokens(batch["labels"])
    value, loss_sum, local_n = wrapped(batch["input_ids"], batch["labels"], batch["position_ids"],
                                       loss_scale=1.0 / max(count, 1))
    value.backward()
    total = dist.all_reduce(loss_sum.clone())
    for p in sp_model.parameters():
        dist.all_reduce(p.grad)                      # each rank holds the gradient of its tokens
    mean = total / max(count, 1)
    if answer_fraction == 0:
        assert count == 0 and mean.item() == 0.0
        assert all((p.grad == 0).all() for p in sp_model.parameters())
    else:
        torch.testing.assert_close(mean, ref_loss, **LOSS_TOL)
        for (name, p) in sp_model.named_parameters():
            torch.testing.assert_close(p.grad, ref_grads[name], **GRAD_TOL, msg=name)
    return par.sp_rank, local_n, count


# odd length (padded), packed documents, and a step with no answers at all; at sp=4 the first
# shard of the 0.02-answer sample usually holds no answer token
SP_CASES = [(45, False, 0.3), (38, True, 0.3), (27, False, 0.0)]
for _world in (2, 4):   # run on the ranks test_ulysses.py's cases use too (tests/spawned_worlds.py)
    spawned_worlds.register(_world, "test_loss", _sp_worker, SP_CASES)


@pytest.mark.parametrize("world", [2, 4])
def test_sp_loss_and_grads_equal_hf(world):
    per_rank = spawned_worlds.results(world, "test_loss")
    cases = SP_CASES
    for i in range(len(cases)):
        results = [rank_results[i] for rank_results in per_rank]
        counts = {c for _, _, c in results}
        assert len(counts) == 1 and sum(local for _, local, _ in results) == counts.pop()


def _checkpointed_reference(hidden, weight, labels, chunk):
    """The loss before the one-buffer function: per-chunk ``index_select`` + checkpoint, the
    zero terms that tie both inputs to the graph (autograd sums the per-chunk gradients)."""
    from torch.utils.checkpoint import checkpoint

    def chunk_sum(h, w, y):
        logits = h @ w.t()
        return F.cross_entropy(logits.float() if logits.dtype == torch.bfloat16 else logits, y, reduction="sum")

    h, y = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    picked = loss.answer_rows(y)              # the real rows on fake tensors
    total = (h[:1] * 0).sum() + (weight[:1] * 0).sum()
    for start in range(0, picked.numel(), chunk):
        rows = picked[start:start + chunk]
        total = total + checkpoint(chunk_sum, h.index_select(0, rows), weight, y.index_select(0, rows),
                                   use_reentrant=False)
    return total


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("chunk", [1, 13, 4096])
def test_one_buffer_loss_equals_the_checkpointed_chunks(dtype, tol, chunk):
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 60, 24, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(200, 24, generator=g, dtype=dtype) * 2).requires_grad_()
    labels = torch.where(torch.rand(2, 60, generator=g) < 0.4, torch.randint(0, 200, (2, 60), generator=g), -100)
    scale = torch.tensor(0.37, dtype=dtype)
    ref = _checkpointed_reference(hidden, weight, labels, chunk)
    ref_grads = torch.autograd.grad(ref * scale, (hidden, weight))
    got, n = loss.answer_loss_sum(hidden, weight, labels, chunk)
    grads = torch.autograd.grad(got * scale, (hidden, weight))
    assert n == int((labels != -100).sum()) and got.dtype == ref.dtype
    torch.testing.assert_close(got, ref, atol=tol * abs(ref.item()), rtol=0)
    for a, b in zip(grads, ref_grads):
        assert (a - b).abs().max() <= tol * b.abs().max()


def test_backward_writes_one_gradient_buffer():
    """Tracked on fake tensors: backward holds the two gradients and one chunk's logits, not a
    ``tokens x hidden`` zero gradient per chunk as the checkpointed chunks did."""
    from longctx.train import memtrack

    t, d, v, chunk = 4096, 64, 1000, 64
    labels = torch.where(torch.arange(t) % 2 == 0, torch.arange(t) % v, -100)     # 2048 answers, 32 chunks
    rows = (labels != -100).nonzero().squeeze(1)
    peaks = {}
    for name, fn in (("one_buffer", lambda h, w: loss.answer_loss_sum(h, w, labels, chunk)[0]),
                     ("checkpointed", lambda h, w: _checkpointed_reference(h, w, labels, chunk))):
        with memtrack.fake_mode() as mode:
            h = torch.empty(t, d, requires_grad=True)
            w = torch.empty(v, d, requires_grad=True)
            fake_rows = mode.from_tensor(rows)
            peaks[name] = memtrack.track(lambda: fn(h, w).backward(), [h, w], answer_rows=lambda y: fake_rows).peak
    inputs = 2 * (t * d + v * d) * 4                    # hidden, weight and their gradients
    logits = 3 * chunk * v * 4                          # a chunk's logits, softmax, gradient
    assert peaks["one_buffer"] <= inputs + logits + 2 * t * 8 + 4 * chunk * d * 4
    assert peaks["checkpointed"] >= peaks["one_buffer"] + t * d * 4
