"""Ulysses attention: sharded forward/backward equals single-process attention and DeepSpeed's.

Distributed cases run in spawned gloo processes (world sizes 2 and 4), float32, tolerances
atol = rtol = 1e-5 on outputs and on the gradients of q, k and v.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F
import spawned_worlds
from longctx.train import dist, ulysses

ATOL = RTOL = 1e-5
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


# --------------------------------------------------------------------------- single process


def test_head_checks_name_numbers_and_choices():
    assert ulysses.check_heads(32, 8, 4) == "split"
    assert ulysses.check_heads(32, 8, 16) == "replicate"
    assert ulysses.valid_sp(32, 8) == [1, 2, 4, 8, 16, 32]
    with pytest.raises(ValueError, match=r"12 query heads / 4 KV heads over sp=8.*valid sp: \[1, 2, 4, 12\]"):
        ulysses.check_heads(12, 4, 8)
    with pytest.raises(ValueError, match=r"24 query heads / 8 KV heads over sp=3"):
        ulysses.check_heads(24, 8, 3)


def test_divisibility_message():
    with pytest.raises(ValueError, match=r"sequence length 1000003 is not divisible by sp=8 \(pad to 1000008\)"):
        ulysses.require_divisible(1_000_003, 8)
    ulysses.require_divisible(1_000_000, 8)


def test_shard_inputs_pads_and_cuts():
    ids = torch.arange(1, 12)[None]                      # 11 tokens, sp=4 -> padded to 12
    labels = ids.clone()
    shards = [ulysses.shard_inputs({"input_ids": ids, "labels": labels}, sp=4, sp_rank=r, pad_id=0) for r in range(4)]
    assert [s["input_ids"].shape[1] for s in shards] == [3, 3, 3, 3]
    full = {k: torch.cat([s[k] for s in shards], dim=1) for k in shards[0]}
    assert full["input_ids"].tolist() == [list(range(1, 12)) + [0]]
    assert full["labels"][0, -1] == -100
    assert full["position_ids"].tolist() == [list(range(12))]
    with pytest.raises(ValueError, match="pad to 12"):
        ulysses.shard_inputs({"input_ids": ids}, sp=4, sp_rank=0, pad=False)


def test_document_ids_follow_position_restarts():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert ulysses.document_ids(pos).tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2]]
    assert ulysses.document_ids(torch.arange(5)[None]) is None


# --------------------------------------------------------------------------- distributed workers


def _reference(q, k, v, position_ids, scale):
    """Plain math attention in float64: GQA by repetition, causal within documents."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    docs = ulysses.document_ids(position_ids)
    n = q.shape[2]
    mask = torch.ones(n, n, dtype=torch.bool).tril()[None]
    if docs is not None:
        mask = mask & (docs[:, :, None] == docs[:, None, :])
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    return (scores.softmax(-1) @ v.double()).to(q.dtype)


def _case_inputs(b, n, hq, hk, d, packed, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for h in (hq, hk, hk))
    grad = torch.randn(b, n, hq, d, generator=g)
    if packed:  # three documents of uneven length
        cuts = [n // 3, n // 3 + n // 4]
        pos = torch.cat([torch.arange(cuts[0]), torch.arange(cuts[1] - cuts[0]), torch.arange(n - cuts[1])])
    else:
        pos = torch.arange(n)
    return q, k, v, grad, pos[None].expand(b, n).contiguous()


def _shard_seq(t, sp, rank, dim):
    total = ulysses.padded_length(t.shape[dim], sp)
    if total != t.shape[dim]:
        shape = list(t.shape)
        shape[dim] = total - t.shape[dim]
        t = torch.cat([t, torch.zeros(shape, dtype=t.dtype)], dim=dim)
    size = total // sp
    return t.narrow(dim, rank * size, size)


def deepspeed_on_cpu() -> None:
    """Join DeepSpeed's comm layer to the running gloo group. On CPU its backend would first
    JIT-compile a shared-memory all-reduce op (about a minute, needs g++); the all-to-all that
    DistributedAttention uses goes through torch.distributed, so that op is switched off."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # an editable probe cache, by design
    deepspeed.init_distributed(dist_backend="gloo")


def _check_all_gather(par) -> None:
    """Both gather paths (torch >= 2.13's fused collective and the list fallback of older torch)
    return every rank's shard in rank order."""
    import torch.distributed as tdist

    mine = torch.arange(6, dtype=torch.float32).reshape(2, 3) + 100 * par.sp_rank
    expected = torch.cat([torch.arange(6, dtype=torch.float32).reshape(2, 3) + 100 * r for r in range(par.sp)], 1)
    torch.testing.assert_close(dist.all_gather(mine, par.sp_group, dim=1), expected, atol=0, rtol=0)
    paths = [False] + ([True] if hasattr(tdist, "all_gather_single") else [])
    for single in paths:
        out = torch.empty(2 * par.sp, 3)
        dist._gather_into(out, mine.contiguous(), par.sp_group, single=single)
        torch.testing.assert_close(out, expected.reshape(2, par.sp, 3).movedim(1, 0).reshape(-1, 3), atol=0, rtol=0)


def _ulysses_worker(cases, with_deepspeed):
    par = dist.init(sp=int(os.environ["WORLD_SIZE"]))
    sp, rank = par.sp, par.sp_rank
    _check_all_gather(par)
    torch.set_default_dtype(torch.float32)
    ds_attention = None
    if with_deepspeed:
        from deepspeed.sequence.layer import DistributedAttention

        deepspeed_on_cpu()

        def ds_local(q, k, v):  # DeepSpeed hands [B, S, H/sp, D]; same SDPA kernel as ours
            out = ulysses.local_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale)
            return out.transpose(1, 2)

        ds_attention = DistributedAttention(ds_local, par.sp_group, scatter_idx=2, gather_idx=1)
    report = []
    for (b, n, hq, hk, d, packed) in cases:
        q, k, v, grad, pos = _case_inputs(b, n, hq, hk, d, packed, seed=n * 31 + hq + hk)
        scale = d ** -0.5
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        ref = _reference(*leaves, pos, scale).transpose(1, 2)       # [B, S, H, D]
        ref.backward(grad)
        ref_grads = [t.grad for t in leaves]

        local = [_shard_seq(t, sp, rank, 2).clone().requires_grad_(True) for t in (q, k, v)]
        pos_local = ulysses.shard_inputs({"input_ids": pos, "position_ids": pos}, sp=sp, sp_rank=rank)["position_ids"]
        out, _ = ulysses.ulysses_attention_forward(None, *local, None, scaling=scale, position_ids=pos_local)
        out.backward(_shard_seq(grad, sp, rank, 1))
        real = min(out.shape[1], max(0, n - rank * out.shape[1]))    # tokens of this shard that are not padding
        torch.testing.assert_close(out[:, :real], _shard_seq(ref.detach(), sp, rank, 1)[:, :real], atol=ATOL, rtol=RTOL)
        for mine, full in zip(local, ref_grads):
            torch.testing.assert_close(mine.grad[:, :, :real], _shard_seq(full, sp, rank, 2)[:, :, :real],
                                       atol=ATOL, rtol=RTOL)
        compared_ds = False
        if ds_attention is not None and not packed and hk % sp == 0:
            ds_in = [t.detach().transpose(1, 2).contiguous().requires_grad_(True) for t in local]  # [B, s, H, D]
            ds_out = ds_attention(*ds_in, batch_dim_idx=0)
            ds_out.backward(_shard_seq(grad, sp, rank, 1))
            torch.testing.assert_close(out, ds_out, atol=ATOL, rtol=RTOL)
            for mine, theirs in zip(local, ds_in):
                torch.testing.assert_close(mine.grad, theirs.grad.transpose(1, 2), atol=ATOL, rtol=RTOL)
            compared_ds = True
        report.append(((b, n, hq, hk, d, packed), compared_ds))
    return report


WORLD_CASES = [
    (2, [(1, 16, 4, 2, 8, False),      # split KV heads
         (2, 29, 4, 1, 8, False),      # odd length (padded), one KV head replicated
         (1, 30, 4, 2, 8, True)]),     # packed documents, positions restart
    (4, [(1, 37, 8, 2, 8, False),      # GQA 2 KV heads at sp 4: replicate, odd length
         (1, 40, 8, 8, 8, False),      # GQA 8 KV heads at sp 4: split
         (2, 35, 16, 8, 4, True),      # packed, odd, split
         (1, 33, 8, 2, 8, True)]),     # packed, odd, replicate
]
for _world, _cases in WORLD_CASES:   # run on the ranks test_loss.py's cases use too (tests/spawned_worlds.py)
    spawned_worlds.register(_world, "test_ulysses", _ulysses_worker, _cases, HAS_DEEPSPEED)


@pytest.mark.parametrize("world,cases", WORLD_CASES)
def test_ulysses_matches_single_process_and_deepspeed(world, cases):
    report = spawned_worlds.results(world, "test_ulysses")
    assert all(len(r) == len(cases) for r in report)
    compared = [c for c, ds in report[0] if ds]
    assert compared or not HAS_DEEPSPEED, "no case was compared with DeepSpeed"


def test_deepspeed_is_installed_for_the_comparison():
    pytest.importorskip("deepspeed", reason="install deepspeed (test extra) to compare with DistributedAttention")


def test_sdpa_gets_kv_heads_uncopied_and_refuses_huge_masks():
    """GQA goes to SDPA as ``enable_gqa=True`` with Hk heads (no Hq-sized copies of k and v), and
    packed documents longer than MAX_SDPA_MASK_TOKENS fail before any S x S mask is built."""
    from torch.overrides import TorchFunctionMode

    calls = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.scaled_dot_product_attention:
                calls.append((args[1].shape[1], kwargs.get("enable_gqa", False)))
            return func(*args, **kwargs)

    q, k, v, _, pos = _case_inputs(1, 24, 8, 2, 8, True, seed=2)
    with Record():
        ulysses.local_attention(q, k, v, 8 ** -0.5, None)
        ulysses.local_attention(q, k, v, 8 ** -0.5, ulysses.document_ids(pos))
    assert calls == [(2, True), (2, True)]
    n = ulysses.MAX_SDPA_MASK_TOKENS + 1
    tiny = torch.zeros(1, 1, n, 1)
    two_docs = torch.cat([torch.arange(n // 2), torch.arange(n - n // 2)])[None]
    with pytest.raises(ValueError, match="install flash-attn"):
        ulysses.local_attention(tiny, tiny, tiny, 1.0, ulysses.document_ids(two_docs))


def test_local_attention_matches_reference_single_process():
    q, k, v, _, pos = _case_inputs(2, 24, 4, 2, 8, True, seed=1)
    out = ulysses.local_attention(q, k, v, 8 ** -0.5, ulysses.document_ids(pos))
    torch.testing.assert_close(out, _reference(q, k, v, pos, 8 ** -0.5), atol=ATOL, rtol=RTOL)
    assert F.scaled_dot_product_attention is not None
