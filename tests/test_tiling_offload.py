"""Tiled MLP and checkpoint offload change where memory lives, never the gradients.

Reference: the same tiny transformers ``LlamaForCausalLM`` with neither (no checkpointing at
all). Tiled MLP sums weight gradients tile by tile, so results agree up to rounding: fp64 within
1e-12, fp32 within 1e-6. Offload copies a layer's input out and back, so alone it is bitwise.
Without CUDA the offload path copies into a separate CPU tensor; the pack/unpack logic, the
prefetch order and the byte counts are the same as on a GPU.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import pytest
import spawned_worlds
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from longctx.train.offload import checkpoint_layers, offloaded_layers
from longctx.train.tiled_mlp import tile_mlps

TOL = {torch.float64: 1e-12, torch.float32: 1e-6}
TOKENS = 50                     # 7-token tiles: 7 full tiles and one of 1


def tiny_llama(dtype: torch.dtype, layers: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).to(dtype)


def grads(model: LlamaForCausalLM, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    clean = {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in model.named_parameters()}
    return loss.detach(), clean


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("tile, offload", [(7, 0), (0, 2), (7, 2), (0, 3), (64, 3)],
                         ids=["tiled", "offload-2", "both", "offload-all", "one-tile+offload-all"])
def test_gradients_equal_the_plain_model(dtype, tile, offload):
    base = tiny_llama(dtype)
    ids = torch.randint(0, 96, (1, TOKENS), generator=torch.Generator().manual_seed(1))
    ref_loss, ref = grads(copy.deepcopy(base), ids)
    model = copy.deepcopy(base)
    if tile:
        tile_mlps(model.model.layers, tile)
    store = checkpoint_layers(model.model.layers, offload)
    loss, got = grads(model, ids)
    assert sorted(got) == sorted(ref)
    tol = 0.0 if not tile else TOL[dtype]        # offload alone moves bytes: bitwise equal
    torch.testing.assert_close(loss, ref_loss, atol=tol, rtol=0)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=tol, rtol=0, msg=lambda m: f"{name}: {m}")
    assert store.offloaded == offload and store.device_bytes == store.host_bytes == 0   # all released


def test_accounting_shows_what_stays_on_the_device():
    model = tiny_llama(torch.float32, layers=4)
    store = checkpoint_layers(model.model.layers, 3)
    ids = torch.randint(0, 96, (1, TOKENS), generator=torch.Generator().manual_seed(2))
    loss = model(input_ids=ids, labels=ids).loss
    per_layer = TOKENS * 32 * 4                        # tokens x hidden x fp32
    assert (store.device_bytes, store.host_bytes) == (1 * per_layer, 3 * per_layer)
    loss.backward()
    assert (store.device_bytes, store.host_bytes) == (0, 0)
    assert (store.peak_device_bytes, store.peak_host_bytes) == (per_layer, 3 * per_layer)
    assert store.prefetched == 2                       # layers 1 and 0 were fetched while 2 and 1 recomputed


def test_offloaded_copy_is_a_separate_tensor():
    from longctx.train.offload import CheckpointStore

    store = CheckpointStore()
    x = torch.randn(5, 3)
    before = x.clone()
    packed = store.pack(x, offload=True)
    x.zero_()                                           # the original may be reused once packed
    back = store.unpack(packed)
    assert back.data_ptr() != x.data_ptr()
    torch.testing.assert_close(back, before, atol=0, rtol=0)


def test_no_grad_forward_and_names_are_unchanged():
    base = tiny_llama(torch.float64)
    model = copy.deepcopy(base)
    tile_mlps(model.model.layers, 4)
    checkpoint_layers(model.model.layers, 1)
    assert list(model.state_dict()) == list(base.state_dict())    # checkpoints and exports unaffected
    ids = torch.randint(0, 96, (1, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-12, rtol=0)


def test_offload_plan_and_bad_counts():
    assert offloaded_layers(4, 2) == [True, True, False, False]
    with pytest.raises(ValueError, match="cannot offload 5 of 4 layers"):
        offloaded_layers(4, 5)
    with pytest.raises(ValueError, match="tile_tokens must be >= 1"):
        tile_mlps(tiny_llama(torch.float32).model.layers, 0)


def test_build_model_wires_the_plan(tmp_path):
    """``build_model`` tiles and offloads as the params say, with the plain model's gradients."""
    from longctx.train import dist
    from longctx.core.config import load_params
    from longctx.train.loss import shift_labels
    from longctx.train.config import TrainConfig
    from longctx.train.model import build_model
    root = Path(__file__).resolve().parents[1]
    tiny = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2}
    stage = [{"name": "a", "seq_len": 64, "sp": 1, "global_batch": 1, "rope": {"type": "default", "theta": 1e4}}]
    out = {}
    for mode, over in {"plain": {"tiled_mlp": "never", "offload_checkpoints": "none", "norm_tile_tokens": 0},
                       "both": {"tiled_mlp": "always", "mlp_tile_tokens": 16, "offload_checkpoints": "all",
                                "norm_tile_tokens": 10}}.items():
        cfg = load_params(TrainConfig, root / "params/demo/03_train.yaml",
                          {"tiny": tiny, "stages": stage, "output_dir": str(tmp_path), "gpus_per_node": 1,
                           "dtype": "float32", **over})
        with dist.use(dist.current()):                 # restores the previous grid afterwards
            model = build_model(cfg, cfg.stages[0], dist.init(sp=1))
            ids = torch.randint(0, 96, (1, 64), generator=torch.Generator().manual_seed(4))
            pos = torch.arange(64)[None]
            loss, _, _ = model(ids, shift_labels(ids, pos), pos, loss_scale=1 / 63)
            loss.backward()
        tiled_norms = sum(type(m.__dict__.get("forward")).__name__ == "_TiledForward" for m in model.modules())
        assert tiled_norms == (0 if mode == "plain" else 2 * 3 + 1)     # every decoder norm and the final one
        out[mode] = ({n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in model.named_parameters()},
                     model.memory_plan, model.checkpoint_store)
    assert (out["plain"][1].tiled_mlp_tokens, out["plain"][1].offload_layers) == (0, 0)
    assert (out["both"][1].tiled_mlp_tokens, out["both"][1].offload_layers) == (16, 3)
    assert out["both"][2].offloaded == 3 and out["plain"][2].offloaded == 0
    for name, g in out["plain"][0].items():
        torch.testing.assert_close(out["both"][0][name], g, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")


def _fsdp_worker(root: str, out_dir: str) -> dict:
    """Rank body: sp=2 Ulysses + FSDP2 over gloo; full gradients of the plain and the tiled +
    offloaded build on the same sample."""
    from longctx.train import dist
    from longctx.core.config import load_params
    from longctx.train.loss import shift_labels
    from longctx.train.config import TrainConfig
    from longctx.train.model import build_model
    from longctx.train.ulysses import shard_inputs

    tiny = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2}
    stage = [{"name": "a", "seq_len": 64, "sp": 2, "global_batch": 1, "rope": {"type": "default", "theta": 1e4}}]
    par = dist.init(sp=2)
    ids = torch.randint(0, 96, (1, 64), generator=torch.Generator().manual_seed(5))
    pos = torch.arange(64)[None]
    shard = shard_inputs({"input_ids": ids, "labels": shift_labels(ids, pos), "position_ids": pos})
    result = {}
    for mode, over in {"plain": {"tiled_mlp": "never", "offload_checkpoints": "none", "norm_tile_tokens": 0},
                       "both": {"tiled_mlp": "always", "mlp_tile_tokens": 12, "offload_checkpoints": "all",
                                "norm_tile_tokens": 5}}.items():
        cfg = load_params(TrainConfig, Path(root) / "params/demo/03_train.yaml",
                          {"tiny": tiny, "stages": stage, "output_dir": out_dir, "gpus_per_node": 2,
                           "dtype": "float32", **over})
        model = build_model(cfg, cfg.stages[0], par)
        loss, _, _ = model(shard["input_ids"], shard["labels"], shard["position_ids"], loss_scale=1 / 63)
        loss.backward()
        result[mode] = {n.replace("_checkpoint_wrapped_module.", ""): p.grad.full_tensor().numpy()   # picklable
                        for n, p in model.named_parameters()}
        result[mode + "_offloaded"] = model.checkpoint_store.offloaded
    return result


# on the 2 ranks other files' sharded tests use too (tests/spawned_worlds.py); the output_dir is
# only a config value here (building and running the model writes nothing)
spawned_worlds.register(2, "test_tiling_offload", _fsdp_worker, str(Path(__file__).resolve().parents[1]),
                        tempfile.gettempdir())


def test_fsdp_and_ulysses_keep_the_gradients():
    """Two gloo ranks, sp=2, FSDP2: tiled MLP (3 tiles of a 32-token shard), tiled RMSNorms (7 tiles)
    and all layers offloaded."""
    per_rank = spawned_worlds.results(2, "test_tiling_offload")
    for rank in per_rank:
        assert rank["both_offloaded"] == 2 and rank["plain_offloaded"] == 0
        assert sorted(rank["both"]) == sorted(rank["plain"])
        for name, g in rank["plain"].items():
            torch.testing.assert_close(torch.from_numpy(rank["both"][name]), torch.from_numpy(g), atol=1e-6, rtol=0,
                                       msg=lambda m: f"{name}: {m}")
