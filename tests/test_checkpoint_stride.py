"""Checkpoint stride: of the offloaded layers only every ``s``-th stores its input; the others' are
recomputed in backward by running the previous layer once more (``longctx.train.offload``).

Reference: the same model with every offloaded layer storing its input (stride 1, itself bitwise
equal to the plain model: ``tests/test_tiling_offload.py``). The rerun repeats the first forward
with the same inputs, grad mode, autocast state and RNG state, so the recomputed input, and with it
the loss and every gradient, is bitwise equal (the issue asks for fp64 <= 1e-12 and fp32 <= 1e-6).
Checked on one process (fp64 and fp32, strides 2 and 3, under bf16 autocast, with dropout), and
through the trainer's build under FSDP2 (weights offloaded, one rank) and FSDP2 + Ulysses sp=2 over
gloo, where the layer rerun must gather its FSDP unit first. The store holds ``ceil(k / s)``
checkpoints; the plan chooses a stride only where the host does not fit otherwise.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import spawned_worlds
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from longctx.train.memory import GIB, KNOWN, checkpoint_bytes, dims_from_config, estimate, plan, stored_layers
from longctx.train.offload import checkpoint_layers, skipped_layers
from longctx.train.tiled_mlp import tile_mlps

ROOT = Path(__file__).resolve().parents[1]
LLAMA_8B = KNOWN["meta-llama/Llama-3.1-8B-Instruct"]
TOKENS = 40


def tiny_llama(dtype: torch.dtype, layers: int = 5, dropout: float = 0.0) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         attention_dropout=dropout, attn_implementation="sdpa")
    return LlamaForCausalLM(config).to(dtype)


def run(model: LlamaForCausalLM, ids: torch.Tensor, autocast: bool = False, seed: int = 7):
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in model.named_parameters()}


def assert_same(got, ref, atol: float = 0.0) -> None:
    (loss, grads), (ref_loss, ref_grads) = got, ref
    torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=0)
    assert sorted(grads) == sorted(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")


def with_stride(base, offload: int, stride: int, tile: int = 0):
    model = copy.deepcopy(base)
    if tile:
        tile_mlps(model.model.layers, tile)
    return model, checkpoint_layers(model.model.layers, offload, stride=stride)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("offload, stride, tile", [(5, 2, 0), (5, 3, 0), (4, 2, 7), (2, 2, 0), (5, 5, 0)],
                         ids=["all-2", "all-3", "four-2-tiled", "two-2", "all-5"])
def test_gradients_equal_the_stored_path(dtype, offload, stride, tile):
    base = tiny_llama(dtype)
    ids = torch.randint(0, 96, (1, TOKENS), generator=torch.Generator().manual_seed(1))
    reference, ref_store = with_stride(base, offload, 1, tile)
    ref = run(reference, ids)
    model, store = with_stride(base, offload, stride, tile)
    got = run(model, ids)
    assert_same(got, ref)           # bitwise; the bound is 1e-12 (fp64) / 1e-6 (fp32)
    skipped = sum(skipped_layers(5, offload, stride))
    assert skipped == offload - stored_layers(offload, stride) > 0
    assert (store.skipped, store.recomputed) == (skipped, skipped)      # each skipped input recomputed once
    assert store.offloaded == ref_store.offloaded - skipped
    assert store.device_bytes == store.host_bytes == 0                  # all released


def test_autocast_and_dropout_are_those_of_the_forward():
    """One rank trains fp32 weights under bf16 autocast: the rerun must autocast too; with dropout
    it must draw the forward's random numbers (a rerun without either differs)."""
    base = tiny_llama(torch.float32, dropout=0.3)
    ids = torch.randint(0, 96, (1, TOKENS), generator=torch.Generator().manual_seed(2))
    for autocast in (True, False):
        ref = run(with_stride(base, 5, 1)[0], ids, autocast=autocast)
        model, store = with_stride(base, 5, 2)
        assert_same(run(model, ids, autocast=autocast), ref)
        assert store.recomputed == 2


def test_store_holds_every_stride_th_checkpoint():
    """Host bytes after forward: ceil(k / s) layer inputs, as ``checkpoint_bytes`` and the estimate say."""
    base = tiny_llama(torch.float32, layers=5)
    config = base.config
    ids = torch.randint(0, 96, (1, TOKENS), generator=torch.Generator().manual_seed(3))
    per_layer = TOKENS * 32 * 4
    for offload, stride, stored in ((5, 1, 5), (5, 2, 3), (4, 2, 2), (5, 3, 2), (3, 2, 2)):
        model, store = with_stride(base, offload, stride)
        loss = model(input_ids=ids, labels=ids).loss
        dims = dims_from_config(config)
        assert (store.device_bytes, store.host_bytes) == ((5 - offload) * per_layer, stored * per_layer)
        assert store.host_bytes == checkpoint_bytes(dims, TOKENS, 4, offload, stride)[1]
        gib = estimate(dims, TOKENS, 1, 1, 4, offload_layers=offload, optimizer=False, checkpoint_stride=stride)
        assert gib["host_tensor_bytes"] == store.host_bytes
        loss.backward()
        assert (store.device_bytes, store.host_bytes) == (0, 0)
    assert skipped_layers(6, 5, 2) == [False, True, False, True, False, False]
    with pytest.raises(ValueError, match="stride must be >= 1"):
        skipped_layers(4, 4, 0)


def test_a_skipped_layer_must_follow_its_source():
    """A skipped layer's input has to be the output of the layer checkpointed just before it."""
    base = tiny_llama(torch.float32, layers=3)
    model, _ = with_stride(base, 3, 2)
    layers = model.model.layers
    x = torch.randn(1, 8, 32, requires_grad=True)
    pos = torch.arange(8)[None]
    emb = model.model.rotary_emb(x, pos)
    with pytest.raises(RuntimeError, match="output of the layer checkpointed just before"):
        layers[1](x * 2, position_embeddings=emb, attention_mask=None)


def test_recompute_costs_one_layer_forward_per_skipped_layer():
    """FLOPs of a step (``FlopCounterMode``): stride 2 over 4 layers adds two layer forwards, about the
    ``recompute_fraction`` the launch prints (12.6 % counted, 12.5 % printed)."""
    from torch.utils.flop_counter import FlopCounterMode

    from longctx.train.memory import recompute_fraction

    base = tiny_llama(torch.float32, layers=4)
    ids = torch.randint(0, 96, (1, TOKENS), generator=torch.Generator().manual_seed(4))
    counts = {}
    for stride in (1, 2):
        model, _ = with_stride(base, 4, stride)
        with FlopCounterMode(display=False) as counter:
            run(model, ids)
        counts[stride] = counter.get_total_flops()
    layer = copy.deepcopy(base.model.layers[0])
    x = torch.randn(1, TOKENS, 32)
    emb = base.model.rotary_emb(x, torch.arange(TOKENS)[None])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(x, position_embeddings=emb, attention_mask=None)
    assert counts[2] - counts[1] == 2 * counter.get_total_flops()
    assert (counts[2] - counts[1]) / counts[1] == pytest.approx(recompute_fraction(2, 4), rel=0.1)


# ------------------------------------------------------------------ the plan


def test_plan_strides_only_where_the_host_needs_it():
    kw = dict(optimizer=False, norm_tile_tokens=65536, mlp_tile_tokens=16384, offload_states=True)
    h100 = plan(LLAMA_8B, 524288, 1, 1, 75.6, 96, "always", offload="auto", checkpoint_stride="auto", **kw)
    assert h100.fits and h100.checkpoint_stride == 2
    assert h100.gib["host_checkpoints"] == stored_layers(h100.offload_layers, 2) * 4.0   # inputs of 4 GiB
    stored_all = plan(LLAMA_8B, 524288, 1, 1, 75.6, 96, "always", offload="auto", checkpoint_stride=1, **kw)
    assert not stored_all.fits_host and stored_all.fits_gpu               # what stride 1 would need
    big_host = plan(LLAMA_8B, 524288, 1, 1, 75.6, 256, "always", offload="auto", checkpoint_stride="auto", **kw)
    assert big_host.fits and big_host.checkpoint_stride == 1              # the host holds them all: no recompute
    short = plan(LLAMA_8B, 32768, 1, 1, 75.6, 96, "always", offload="auto", checkpoint_stride="auto", **kw)
    assert short.fits and short.checkpoint_stride == 1
    tiny_host = plan(LLAMA_8B, 524288, 1, 1, 75.6, 20, "always", offload="auto", checkpoint_stride="auto", **kw)
    assert not tiny_host.fits and tiny_host.checkpoint_stride == 4         # the least host auto gets to
    assert tiny_host.gib["host"] < h100.gib["host"]
    k = h100.offload_layers
    assert f"checkpoint_stride 2: {(k + 1) // 2} stored, {k // 2} recomputed" in h100.stride_note()
    assert short.stride_note() == ""
    with pytest.raises(ValueError, match="checkpoint_stride"):
        plan(LLAMA_8B, 4096, 1, 1, 80, 96, checkpoint_stride=0)


def test_estimate_stages_a_group_of_inputs():
    """At the top of a group of ``s`` offloaded layers ``s`` layer inputs are on the device at once
    (stride 1 and 2: restored + prefetched, 2)."""
    kw = dict(optimizer=False, tiled_mlp_tokens=8192, norm_tile_tokens=8192, offload_layers=32)
    c = 131072 * 4096 * 2 / GIB
    for stride, staged in ((1, 2), (2, 2), (3, 3), (4, 4)):
        gib = estimate(LLAMA_8B, 131072, 1, 1, checkpoint_stride=stride, **kw)
        assert gib["offload_staging"] == pytest.approx(staged * c), stride
        assert gib["host_checkpoints"] == math.ceil(32 / stride) * 1.0


def test_dry_run_prints_the_stride():
    """Training at 512K with AdamW on the host: 256 GiB of host with every offloaded input stored, 208
    with every other."""
    from longctx.core.config import ParamsError, load_params
    from longctx.train.config import TrainConfig
    from longctx.train.launch import dry_run

    stage = {"name": "one", "samples": "unused", "seq_len": 524288, "sp": 1, "global_batch": 1,
             "rope": {"type": "default", "theta": 5e5}}
    over = {"model": "meta-llama/Llama-3.1-8B", "stages": [stage], "gpus_per_node": 1, "gpu_memory_gb": 80,
            "host_memory_gb": 256, "offload_params": True, "mlp_tile_tokens": 16384, "norm_tile_tokens": 65536}
    row = dry_run(load_params(TrainConfig, ROOT / "params/paper/03_train.yaml", over))[0]
    assert row["ckpt_stride"] == 1 and "checkpoint_stride" not in row["notes"]
    row = dry_run(load_params(TrainConfig, ROOT / "params/paper/03_train.yaml", {**over, "host_memory_gb": 220}))[0]
    assert row["ckpt_stride"] == 2 and row["fits"] and "checkpoint_stride 2" in row["notes"]
    with pytest.raises(ParamsError, match="checkpoint_stride"):
        load_params(TrainConfig, ROOT / "params/paper/03_train.yaml", {"checkpoint_stride": 0})


def test_build_prints_and_wires_the_plan(capsys, tmp_path):
    """The trainer's build (one process, no FSDP) says what the plan chose where the run starts, and wires it:
    the stride, and the host pool sized as the estimate says, which the step uses without a miss."""
    from longctx.core.config import load_params
    from longctx.train import dist
    from longctx.train.config import TrainConfig
    from longctx.train.loss import shift_labels
    from longctx.train.model import build_model

    tiny = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2}
    stage = [{"name": "a", "seq_len": 64, "sp": 1, "global_batch": 1, "rope": {"type": "default", "theta": 1e4}}]
    cfg = load_params(TrainConfig, ROOT / "params/demo/03_train.yaml",
                      {"tiny": tiny, "stages": stage, "output_dir": str(tmp_path), "gpus_per_node": 1, "dtype": "float32",
                       "offload_checkpoints": "all", "checkpoint_stride": 2})
    with dist.use(dist.current()):
        model = build_model(cfg, cfg.stages[0], dist.init(sp=1))
        ids = torch.randint(0, 96, (1, 64), generator=torch.Generator().manual_seed(6))
        pos = torch.arange(64)[None]
        loss, _, _ = model(ids, shift_labels(ids, pos), pos, loss_scale=1 / 63)
        store = model.checkpoint_store
        assert store.pool.live == 2 and store.pool.offset == store.pool.capacity == 2 * 64 * 32 * 4
        loss.backward()
    out = capsys.readouterr().out
    assert "4/4 layer checkpoints in host memory, checkpoint_stride 2: 2 stored, 2 recomputed" in out
    assert f"in one host pool of {2 * 64 * 32 * 4 / 2**30:.2f} GiB" in out
    assert (store.skipped, store.recomputed, store.pool.misses, store.pool.live) == (2, 2, 0, 0)


# ------------------------------------------------------------------ FSDP2 and Ulysses through the trainer's build


def _build_worker(sp: int, root: str) -> dict:
    """Rank body: the trainer's build (tiny model, fp32, every checkpoint offloaded) with stride 1 and 2,
    under FSDP2 (one rank: its own process group, weights offloaded; two: sp=2 Ulysses); full gradients."""
    from longctx.core.config import load_params
    from longctx.train import dist
    from longctx.train.config import TrainConfig
    from longctx.train.loss import shift_labels
    from longctx.train.model import build_model
    from longctx.train.ulysses import shard_inputs

    if sp == 1:   # a plain single process: the one-rank group comes from an in-memory store
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            os.environ.pop(key, None)
    tiny = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2}
    stage = [{"name": "a", "seq_len": 64, "sp": sp, "global_batch": 1, "rope": {"type": "default", "theta": 1e4}}]
    par = dist.init(sp=sp, one_rank_group=True)
    ids = torch.randint(0, 96, (1, 64), generator=torch.Generator().manual_seed(5))
    pos = torch.arange(64)[None]
    shard = shard_inputs({"input_ids": ids, "labels": shift_labels(ids, pos), "position_ids": pos})
    result = {}
    for offload_params in ((True,) if sp == 1 else (False, True)):
        for stride in (1, 2):
            cfg = load_params(TrainConfig, Path(root) / "params/demo/03_train.yaml",
                              {"tiny": tiny, "stages": stage, "gpus_per_node": sp, "dtype": "float32",
                               "offload_checkpoints": "all", "checkpoint_stride": stride, "tiled_mlp": "always",
                               "mlp_tile_tokens": 12, "norm_tile_tokens": 5, "offload_params": offload_params})
            model = build_model(cfg, cfg.stages[0], par)
            loss, _, _ = model(shard["input_ids"], shard["labels"], shard["position_ids"], loss_scale=1 / 63)
            loss.backward()
            store = model.checkpoint_store
            result[(offload_params, stride)] = {
                "loss": float(loss), "plan": model.memory_plan.checkpoint_stride,
                "counts": (store.offloaded, store.skipped, store.recomputed),
                "pool": (store.pool.capacity, store.pool.misses, store.pool.live),   # all slices back after backward
                "grads": {n.replace("_checkpoint_wrapped_module.", ""): p.grad.full_tensor().numpy()
                          for n, p in model.named_parameters()}}
    return result


spawned_worlds.register(2, "test_checkpoint_stride", _build_worker, 2, str(ROOT))   # on the suite's shared 2 ranks


@pytest.mark.parametrize("ranks", [1, 2], ids=["one-rank-offload-params", "fsdp2-ulysses-sp2"])
def test_fsdp2_and_ulysses_keep_the_gradients(ranks):
    from longctx.train import dist

    per_rank = dist.spawn(_build_worker, 1, 1, str(ROOT), timeout_s=240) if ranks == 1 else \
        spawned_worlds.results(2, "test_checkpoint_stride")
    for rank in per_rank:
        for offload_params in {key[0] for key in rank}:
            plain, strided = rank[(offload_params, 1)], rank[(offload_params, 2)]
            assert plain["plan"] == 1 and strided["plan"] == 2
            assert plain["counts"] == (4, 0, 0) and strided["counts"] == (2, 2, 2)
            shard = 64 * 32 * 4 // ranks                        # a rank's 64 / ranks tokens x 32 x fp32
            assert plain["pool"] == (4 * shard, 0, 0) and strided["pool"] == (2 * shard, 0, 0)
            assert strided["loss"] == plain["loss"]
            for name, g in plain["grads"].items():
                torch.testing.assert_close(torch.from_numpy(strided["grads"][name]), torch.from_numpy(g), atol=1e-6,
                                           rtol=0, msg=lambda m: f"{name} (offload_params={offload_params}): {m}")
