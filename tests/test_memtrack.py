"""The fake-tensor memory tracker: hand-checked peaks, the host split, and the bench's ``--fake`` probe.

The tracker (``longctx.train.memtrack``) counts live storage bytes; the hand checks fix what a
peak is (views keep their storage, freed tensors leave), the offload check that layer inputs
moved to host memory leave the device count and are pinned in power-of-two blocks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from longctx.train import memtrack
from longctx.train.memory import checkpoint_bytes, dims_from_config
from longctx.train.offload import checkpoint_layers

ROOT = Path(__file__).resolve().parents[1]


def test_peak_by_hand():
    def step():
        a = torch.empty(1000)                    # 4000 B
        b = torch.empty(2000)                    # 8000 B: 12000 live
        del a
        view = b[:10]
        del b                                    # the view keeps b's 8000 B
        c = torch.empty(1500)                    # 6000 B: 14000 live, the peak
        del c, view
        d = torch.empty(3000)                    # 12000 B alone
        del d

    with memtrack.fake_mode():
        result = memtrack.track(step, [])
    assert result.peak == 14000 and result.where == "empty"


def test_autograd_frees_saved_tensors_and_counts_grads():
    with memtrack.fake_mode():
        w = torch.nn.Parameter(torch.empty(64, 32))          # 8192 B

        def step():
            x = torch.empty(16, 64)                          # 4096 B
            y = (x @ w).relu()                               # 2048 B, saved by relu
            y.sum().backward()
        result = memtrack.track(step, [w])
    assert result.weights == 8192
    assert w.grad is not None and w.grad.shape == (64, 32)
    # the peak is the weight gradient's matmul: w, x (saved by mm), relu's output (saved), its
    # gradient and the new weight gradient, plus the loss's scalars; .grad is not assigned yet
    assert 0 <= result.peak - (8192 + 4096 + 2048 + 2048 + 8192) <= 16 and result.where == "mm"
    assert result.grads == 0


def test_offloaded_inputs_count_as_pinned_host_memory():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    tokens = 40
    with memtrack.fake_mode() as mode:
        model = LlamaForCausalLM(config)
        store = checkpoint_layers(model.model.layers, 2)
        ids = mode.from_tensor(torch.randint(0, 64, (1, tokens)))
        result = memtrack.track(lambda: model(input_ids=ids, labels=ids).loss.backward(),
                                list(model.parameters()), stores=[store])
    per_layer = tokens * 48 * 4
    assert result.host == checkpoint_bytes(dims_from_config(config), tokens, 4, 2)[1] == 2 * per_layer
    assert result.host_pinned == 2 * memtrack.pinned_bytes(per_layer) == 2 * 8192


def test_pinned_bytes_are_powers_of_two():
    assert [memtrack.pinned_bytes(n) for n in (0, 1, 4096, 4097)] == [0, 1, 4096, 8192]
    per_layer = 460800 * 4096 * 2                          # 3.52 GiB at 450K tokens
    assert memtrack.pinned_bytes(per_layer) == 4 * 2**30


def test_bench_fake_probe_runs_the_real_variants():
    """The bench's ``--fake`` on a small shape: the tracked weights are the model's bytes and all
    offloaded layer inputs are host bytes."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_train_throughput as bench

    dims = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2)
    row = bench.fake_probe("ours_tiled_offload", 4096, dims=dims, tile_tokens=1024, offload=2)
    n = 3 * (64 * 16 * 12 + 3 * 64 * 160 + 2 * 64) + 2 * 512 * 64 + 64
    tracked = row["bytes"]
    assert tracked.weights == 2 * n                      # bf16 weights
    assert row["offloaded"] == 2 and tracked.host == tracked.host_pinned == 2 * 4096 * 64 * 2
    assert tracked.peak > tracked.weights + tracked.grads


def test_storages_resized_in_place_count_at_their_size():
    """FSDP2 frees a gathered parameter by resizing its storage to 0 and gathers it again into the same
    storage: the tracker counts the bytes a storage has now, not those it was created with."""
    with memtrack.fake_mode():
        tracker = memtrack.Tracker()
        with tracker:
            x = torch.empty(1024)                       # 4 KiB
            x.untyped_storage().resize_(0)              # freed in place
            y = torch.empty(4096)                       # 16 KiB: the peak, without x
            assert tracker.finish().peak == 16384
            del y
            x.untyped_storage().resize_(4096)
            torch.zeros(1024, out=x)                    # gathered again: an op's output
            z = torch.empty(4096)
            assert tracker.finish().peak == 4096 + 16384
            del z


def test_fake_probe_with_params_offloaded_keeps_weights_and_gradients_off_the_device():
    """``offload_params`` on fake tensors: FSDP2 with CPUOffloadPolicy on a one-rank ``fake`` process
    group. Its shards and gradients count as host bytes, its gathered layers (freed by resizing their
    storage to 0) count only while gathered; the tracked peak is then the plain offload's less the
    resident weights and gradients, and the estimate follows it."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_train_throughput as bench

    dims = dict(vocab_size=2048, hidden_size=256, intermediate_size=1024, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2)
    layer = 256 * 64 * 12 + 3 * 256 * 1024 + 2 * 256
    head = 2048 * 256
    kw = dict(dims=dims, tile_tokens=256, offload=3, norm_tile_tokens=256)
    plain = bench.fake_probe("ours_tiled_offload", 512, **kw)["bytes"]
    tracked = bench.fake_probe("ours_offload_params", 512, **kw)["bytes"]
    assert plain.weights == 2 * (3 * layer + 2 * head + 256)
    assert tracked.weights == tracked.grads == 0
    assert tracked.host >= plain.weights + 3 * 512 * 256 * 2    # bf16 shards + every layer input
    # the device keeps the plain run's activations, the root (head + its gradient, reduced in fp32) and
    # about one layer in flight; not every layer gathered (15.4 MB tracked; 20.3 if resize_(0) went unseen)
    assert tracked.peak < plain.peak - plain.weights - plain.grads + 12 * head + 3 * 2 * layer
