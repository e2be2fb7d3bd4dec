"""The memory estimate: its checkpoint part against bytes measured on CPU, its choices, hand checks.

The activation-checkpoint part is exact: the bytes the saved-tensor hooks hold after a forward
(on the device and in host memory, counted by ``offload.CheckpointStore``) equal the estimate's
``checkpoints`` and ``host`` terms to the byte. The rest is checked against hand-computed values
for Llama-3.1-8B; calibration against ``max_memory_allocated`` needs a GPU
(``bench/gpu_train_throughput.py`` records both).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from longctx.train.memory import GIB, KNOWN, ModelDims, checkpoint_bytes, dims_from_config, estimate, plan
from longctx.train.offload import checkpoint_layers
from longctx.train.tiled_mlp import tile_mlps

LLAMA_8B = KNOWN["meta-llama/Llama-3.1-8B-Instruct"]


@pytest.mark.parametrize("dtype, tokens, offload, tile", [(torch.float32, 40, 0, 0), (torch.float32, 33, 2, 8),
                                                          (torch.bfloat16, 57, 3, 0), (torch.float64, 16, 1, 5)])
def test_checkpoint_bytes_equal_the_measured_saved_bytes(dtype, tokens, offload, tile):
    """Weights in the compute dtype (the benchmark's setting, ``optimizer=False``)."""
    model, config = _tiny(dtype)
    if tile:
        tile_mlps(model.model.layers, tile)
    store = checkpoint_layers(model.model.layers, offload)
    ids = torch.randint(0, 64, (1, tokens))
    loss = model(input_ids=ids, labels=ids).loss
    dims, b = dims_from_config(config), dtype.itemsize
    gib = estimate(dims, tokens, 1, 1, b, tiled_mlp_tokens=tile, offload_layers=offload, optimizer=False)
    assert (store.device_bytes, store.host_bytes) == checkpoint_bytes(dims, tokens, b, offload)
    assert (store.device_bytes, store.host_bytes) == (gib["checkpoints"] * GIB, gib["host"] * GIB)
    loss.backward()
    assert (store.device_bytes, store.host_bytes) == (0, 0)


def test_one_rank_under_autocast_keeps_fp32_checkpoints():
    """Training on one rank: fp32 weights, bf16 autocast; the residual stream stays fp32."""
    model, config = _tiny(torch.float32)
    store = checkpoint_layers(model.model.layers, 1)
    ids = torch.randint(0, 64, (1, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    gib = estimate(dims_from_config(config), 24, 1, 1, 2, offload_layers=1)
    assert (store.device_bytes, store.host_bytes) == (gib["checkpoints"] * GIB, gib["host"] * GIB) == (2 * 24 * 48 * 4,
                                                                                                       24 * 48 * 4)
    loss.backward()


def _tiny(dtype: torch.dtype):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(dtype), config


def test_llama_8b_by_hand():
    assert LLAMA_8B.params == 8_030_261_248                       # Meta's model card: 8.03B
    gib = estimate(LLAMA_8B, 184320, 8, 8)                          # the paper's 180K stage
    assert gib["tokens_per_gpu"] == 23040
    assert gib["states"] * GIB == pytest.approx(16 * 8_030_261_248 / 8)
    assert gib["checkpoints"] * GIB == 32 * 23040 * 4096 * 2       # 256 KB per token over 32 layers
    assert gib["root_head_grad"] * GIB == 128256 * 4096 * (2 + 4)  # bf16 gradient + fp32 copy
    assert gib["embedding_end"] * GIB == 2 * 128256 * 4096 * 2
    assert gib["root_head_grad"] + gib["embedding_end"] == pytest.approx(4.9, abs=0.05)   # the ~5 GiB of issue 9
    assert gib["offload_staging"] == 0 and gib["host"] == 0
    untiled = 6 * 23040 * 14336 * 2
    tiled = estimate(LLAMA_8B, 184320, 8, 8, tiled_mlp_tokens=8192)
    assert (gib["layer_working_set"] - tiled["layer_working_set"]) * GIB == untiled - (6 * 8192 * 14336 * 2
                                                                                        + 2 * 23040 * 4096 * 2)
    bench = estimate(LLAMA_8B, 524288, 1, 1, optimizer=False, offload_layers=32)   # one GPU, no optimizer
    assert bench["states"] * GIB == 2 * 2 * 8_030_261_248 and bench["host"] == 128.0   # 512K tokens: 128 GiB
    assert bench["root_head_grad"] == bench["embedding_end"] == bench["weight_copies"] == 0


def test_peak_is_the_larger_phase():
    gib = estimate(LLAMA_8B, 8192, 1, 8)
    backward = sum(gib[k] for k in ("weight_copies", "root_head_grad", "embedding_end", "checkpoints",
                                    "offload_staging", "layer_working_set", "loss_chunk"))
    peak = gib["states"] + max(backward, gib["optimizer_temporaries"])
    assert gib["total"] == pytest.approx(peak + 2.0 + 0.1 * peak)


def test_plan_keeps_as_many_layers_on_the_gpu_as_fit():
    small = plan(LLAMA_8B, 184320, 8, 8, 80, 128)
    assert (small.tiled_mlp_tokens, small.offload_layers, small.fits) == (0, 0, True)
    one_gpu = plan(LLAMA_8B, 524288, 1, 1, 139, 120, optimizer=False)
    k = one_gpu.offload_layers
    assert one_gpu.tiled_mlp_tokens == 8192 and 0 < k < 32 and one_gpu.fits
    fewer = estimate(LLAMA_8B, 524288, 1, 1, optimizer=False, tiled_mlp_tokens=8192, offload_layers=k - 1)
    assert fewer["total"] > 139 >= one_gpu.gib["total"]          # one layer fewer offloaded would not fit
    forced = plan(LLAMA_8B, 184320, 8, 8, 80, 128, tiled_mlp="always", offload="all")
    assert (forced.tiled_mlp_tokens, forced.offload_layers) == (8192, 32)
    never = plan(LLAMA_8B, 1048576, 8, 8, 80, 128, tiled_mlp="never", offload="none")
    assert not never.fits_gpu and never.offload_layers == 0
    no_host = plan(LLAMA_8B, 1048576, 1, 1, 139, 64, optimizer=False)
    assert not no_host.fits_host                                   # 1M tokens need more than 64 GiB of host


def test_offload_needs_checkpointing():
    from pathlib import Path

    from longctx.core.config import ParamsError, load_params
    from longctx.train.config import TrainConfig

    with pytest.raises(ValueError, match="needs activation_checkpointing"):
        estimate(ModelDims(64, 128, 2, 4, 2, 100, 16), 128, 1, 1, offload_layers=1, activation_checkpointing=False)
    demo = Path(__file__).resolve().parents[1] / "params/demo/03_train.yaml"
    with pytest.raises(ParamsError, match="offload_checkpoints.*needs activation_checkpointing: true"):
        load_params(TrainConfig, demo, {"offload_checkpoints": "all", "activation_checkpointing": False})
    off = load_params(TrainConfig, demo, {"activation_checkpointing": False})     # auto then offloads nothing
    assert plan(LLAMA_8B, 1048576, 8, 8, 80, 128, offload=off.offload_checkpoints,
                activation_checkpointing=False).offload_layers == 0
