"""``offload_params``: weights, gradients and AdamW state in host memory (FSDP2's CPUOffloadPolicy).

On a CPU-only machine the offload moves nothing (the device is the host), so what is tested is
that the trainer's path with the policy applied (FSDP2 on a one-rank process group of its own,
or over the ranks of an sp=2 grid) trains exactly as the path without it: three AdamW steps of
the tiny model, fp32, the same losses and the same weights within 1e-6. The policy is checked to
be in force on every FSDP module (sharded weights, gradients and optimizer moments on the CPU),
and a checkpoint of the offloaded model and optimizer resumes to the same next loss.
The memory it saves on a GPU is measured on fake tensors (``tests/test_memtrack.py``) and
estimated (``longctx.train.memory``, ``tests/test_memory_estimate.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import spawned_worlds
import torch

from longctx.core.config import load_params
from longctx.train import dist
from longctx.train.config import TrainConfig, layout
from longctx.train.data import SampleSet

ROOT = Path(__file__).resolve().parents[1]
TINY = {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}


def _samples() -> list[dict]:
    rng = np.random.default_rng(11)
    out = []
    for length in (40, 33, 37, 30):
        ids = rng.integers(1, 256, length)
        out.append({"input_ids": ids, "labels": np.where(rng.random(length) < 0.4, ids, -100)})
    return out


def _config(sp: int, offload: bool) -> TrainConfig:
    stage = {"name": "a", "samples": "unused", "seq_len": 64, "sp": sp, "global_batch": 2,
             "rope": {"type": "default", "theta": 1e4}}
    return load_params(TrainConfig, ROOT / "params/demo/03_train.yaml",
                       {"tiny": TINY, "stages": [stage], "gpus_per_node": 2, "loss_chunk_tokens": 7,
                        "offload_params": offload, "lr": 1e-3})


def _policy_in_force(model) -> int:
    """FSDP modules whose parameter group carries CPUOffloadPolicy (and whose shards sit on the CPU)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule

    count = 0
    for module in model.modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            if group is not None:
                assert isinstance(group.offload_policy, CPUOffloadPolicy), type(module).__name__
                assert all(p.sharded_param.device.type == "cpu" for p in group.fsdp_params)
                count += 1
    return count


def _three_steps(sp: int, offload: bool):
    from longctx.train.model import build_model
    from longctx.train.stage import _train_step

    par = dist.init(sp=sp, one_rank_group=offload)
    cfg = _config(sp, offload)
    lay = layout(cfg.stages[0], par.world_size)
    model = build_model(cfg, cfg.stages[0], par)
    wrapped = _policy_in_force(model) if offload else 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), foreach=True)
    data = SampleSet(_samples(), name="offload samples", max_tokens=64)
    losses = []
    for step in range(3):
        order = [(step + i) % len(data) for i in range(cfg.stages[0].global_batch)]
        row = _train_step(model, optimizer, params, data, order[par.dp_rank::lay.dp], par, cfg.grad_clip, None)
        losses.append(row["loss"])
    moments_on_cpu = all(t.device.type == "cpu" for s in optimizer.state.values() for t in s.values()
                         if isinstance(t, torch.Tensor))
    weights = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().numpy().copy()
               for n, p in model.named_parameters()}
    return losses, weights, wrapped, moments_on_cpu


def _resumed_step(sp: int):
    """One step, a checkpoint (DCP, sharded on the host), a fresh model and optimizer loaded from it:
    the next step's loss from both."""
    import tempfile

    from longctx.train import checkpoint
    from longctx.train.model import build_model
    from longctx.train.stage import _train_step

    par = dist.init(sp=sp, one_rank_group=True)
    cfg = _config(sp, True)
    data = SampleSet(_samples(), name="offload samples", max_tokens=64)
    runs = []
    for _ in range(2):
        model = build_model(cfg, cfg.stages[0], par)
        params = [p for p in model.parameters()]
        runs.append((model, torch.optim.AdamW(params, lr=cfg.lr, foreach=True), params))
    model, optimizer, params = runs[0]
    _train_step(model, optimizer, params, data, [0, 1][par.dp_rank::par.dp], par, cfg.grad_clip, None)
    folder = checkpoint.step_dir(Path(tempfile.mkdtemp()), 1)
    checkpoint.save(folder, model, optimizer, {"step": 1})
    checkpoint.load(folder, runs[1][0], runs[1][1])
    return [_train_step(m, o, ps, data, [2, 3][par.dp_rank::par.dp], par, cfg.grad_clip, None)["loss"]
            for m, o, ps in runs]


def _worker(sp: int):
    if sp == 1:   # a plain single process (no torchrun): the one-rank group comes from an in-memory store
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            os.environ.pop(key, None)
    plain = _three_steps(sp, offload=False)
    offloaded = _three_steps(sp, offload=True)
    return plain, offloaded, (_resumed_step(sp) if sp == 1 else None)


# sp=2 on the 2 ranks other files' sharded tests use too (tests/spawned_worlds.py); sp=1 alone
# (it drops the rank variables: a plain process)
spawned_worlds.register(2, "test_train_offload", _worker, 2)


@pytest.mark.parametrize("sp", [1, 2])
def test_offloaded_params_train_as_the_plain_path(sp):
    results = dist.spawn(_worker, sp, sp, timeout_s=240) if sp == 1 else spawned_worlds.results(2, "test_train_offload")
    (plain_losses, plain_w, plain_wrapped, _), (losses, weights, wrapped, moments_on_cpu), resumed = results[0]
    assert plain_wrapped == 0 and wrapped == 2 + 2   # both decoder layers, the embedding, the root
    assert moments_on_cpu
    assert plain_losses[0] > 1.0 and plain_losses[-1] != plain_losses[0]   # it trained
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-6, atol=1e-6)
    assert weights.keys() == plain_w.keys()
    for name, w in weights.items():
        np.testing.assert_allclose(w, plain_w[name], atol=1e-6, rtol=0, err_msg=name)
    if resumed is not None:   # a resumable checkpoint of the offloaded model and optimizer state
        assert resumed[1] == pytest.approx(resumed[0], abs=1e-6)


def test_build_refuses_offload_without_a_process_group():
    from longctx.train.model import build_model

    cfg = _config(1, True)
    par = dist.Parallel(dist.DistInfo(False, 0, 0, 1), torch.device("cpu"), dp=1, sp=1)
    with pytest.raises(ValueError, match="one_rank_group"):
        build_model(cfg, cfg.stages[0], par)


def _one_gpu_8b(offload: bool, host_gb: float, seq_len: int = 32768) -> TrainConfig:
    stage = {"name": "one", "samples": "unused", "seq_len": seq_len, "sp": 1, "global_batch": 1,
             "rope": {"type": "default", "theta": 5e5}}
    return load_params(TrainConfig, ROOT / "params/paper/03_train.yaml",
                       {"model": "meta-llama/Llama-3.1-8B", "stages": [stage], "gpus_per_node": 1,
                        "gpu_memory_gb": 80, "host_memory_gb": host_gb, "offload_params": offload})


def test_dry_run_offers_offload_params_to_a_one_gpu_8b_run():
    """fp32 weights + AdamW on one GPU need >= 150 GiB: the dry run says so and what offload_params
    needs instead (the GPU: a few GiB at 32K; the host: pinned fp32 shards and gradients + AdamW's
    moments, ~156 GiB, more than a 128 GiB host)."""
    from longctx.train.launch import dry_run
    from longctx.train.memory import KNOWN, host_state_bytes, plan_stage
    from longctx.train.model import refuse_unfit

    plain = dry_run(_one_gpu_8b(False, 128))[0]
    assert not plain["fits"] and plain["gpu_gib"] >= 149   # 20 N bytes = 149.6 GiB
    assert "offload_params: true" in plain["notes"] and "does not fit either (host)" in plain["notes"]
    resident, at_end = host_state_bytes(KNOWN["meta-llama/Llama-3.1-8B"], 1, 2, optimizer=True)
    n = KNOWN["meta-llama/Llama-3.1-8B"].params
    assert resident + at_end > 16 * n                   # pinned blocks round up
    big_host = dry_run(_one_gpu_8b(False, 256))[0]
    assert "offload_params: true" in big_host["notes"] and ": fits" in big_host["notes"]
    offloaded = dry_run(_one_gpu_8b(True, 256))[0]
    assert offloaded["fits"] and offloaded["states_gib"] == 0 and offloaded["gpu_gib"] < 20
    assert offloaded["host_gib"] == pytest.approx((resident + at_end) / 2**30, abs=0.05)
    # before the job starts: a GPU build refuses what fits nowhere, and names the way out
    cfg = _one_gpu_8b(False, 128)
    memory = plan_stage(cfg, cfg.stages[0], 1, 2)
    with pytest.raises(ValueError, match="offload_params: true"):
        refuse_unfit(cfg, cfg.stages[0], memory, "cuda")
    refuse_unfit(cfg, cfg.stages[0], memory, "cpu")     # a CPU run has no GPU budget to break
    cfg = _one_gpu_8b(True, 128)
    with pytest.raises(ValueError, match="host"):
        refuse_unfit(cfg, cfg.stages[0], plan_stage(cfg, cfg.stages[0], 1, 2), "cuda")
