"""Checkpoints: resumable (model + optimizer, every N steps), final (model only), transformers export.

Layout under ``{output_dir}/{stage}/``::

    checkpoints/step_000050/   torch.distributed.checkpoint shards + trainer_state.json
    final/                     model shards + trainer_state.json (the next stage starts here)
    hf/                        optional export of the final weights (bf16), servable as it stands:
                               save_pretrained + tokenizer, chat template, generation config and
                               weights fingerprint (:mod:`longctx.train.serving_files`)

``trainer_state.json`` is written by rank 0 after every rank finished writing its shards, so a
folder without it (a job killed while saving) is ignored. ``torch.distributed.checkpoint``
reshards on load: a stage may resume, or the next stage start, on another number of GPUs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from . import dist

__all__ = ["STATE_FILE", "save", "load", "latest", "is_complete", "prune", "step_dir", "export_hf"]

STATE_FILE = "trainer_state.json"


def _single() -> bool:
    return dist.current().world_size == 1


@contextlib.contextmanager
def _quiet():
    """DCP warns on every single-process save/load that it assumes a single process: it may."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def step_dir(stage_dir: Path, step: int) -> Path:
    return Path(stage_dir) / "checkpoints" / f"step_{step:06d}"


def is_complete(path: Path) -> bool:
    return (Path(path) / STATE_FILE).is_file()


def save(path: Path, model: nn.Module, optimizer=None, state: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and ``optimizer``) shards from every rank, then ``state`` from rank 0."""
    path = Path(path)
    if dist.current().is_main and path.exists():
        shutil.rmtree(path)  # a partial folder from a killed save
    dist.barrier()
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        payload = {"model": model_sd, "optim": optim_sd}
    else:
        payload = {"model": get_model_state_dict(model)}
    with _quiet():
        dcp.save(payload, checkpoint_id=str(path), no_dist=_single())
    dist.barrier()
    if dist.current().is_main:
        tmp = path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state or {}, indent=1), encoding="utf-8")
        os.replace(tmp, path / STATE_FILE)
    dist.barrier()
    return path


def load(path: Path, model: nn.Module, optimizer=None) -> dict[str, Any]:
    """Load shards saved by :func:`save` into ``model`` (and ``optimizer``); return the state."""
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        payload = {"model": model_sd, "optim": optim_sd}
        with _quiet():
            dcp.load(payload, checkpoint_id=str(path), no_dist=_single())
        set_state_dict(model, optimizer, model_state_dict=payload["model"], optim_state_dict=payload["optim"])
    else:
        payload = {"model": get_model_state_dict(model)}
        with _quiet():
            dcp.load(payload, checkpoint_id=str(path), no_dist=_single())
        set_model_state_dict(model, payload["model"])
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def latest(stage_dir: Path) -> Path | None:
    """The newest complete resumable checkpoint of a stage, if any."""
    folder = Path(stage_dir) / "checkpoints"
    done = sorted(p for p in folder.glob("step_*") if is_complete(p)) if folder.is_dir() else []
    return done[-1] if done else None


def prune(stage_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (rank 0); ``keep=0`` deletes all."""
    folder = Path(stage_dir) / "checkpoints"
    if not dist.current().is_main or not folder.is_dir():
        return
    done = sorted(p for p in folder.glob("step_*") if is_complete(p))
    for old in (done[:-keep] if keep else done):
        shutil.rmtree(old, ignore_errors=True)


def export_hf(wrapper: nn.Module, out_dir: Path, dtype: torch.dtype = torch.bfloat16) -> Path | None:
    """Gather the full weights to rank 0's CPU and ``save_pretrained`` them (transformers layout).

    Weights are written in ``dtype`` (bf16: 16 GB for 8B instead of 32 GB in fp32, and engines
    loading with ``dtype=auto`` have turned fp32 configs into fp16). ``config.json`` carries the
    stage's RoPE both as transformers 5's ``rope_parameters`` and as the ``rope_theta`` /
    ``rope_scaling`` that transformers 4.x and serving stacks built on it read (without them a
    1M export loads as ``rope_theta = 10000``), and the dtype as ``dtype`` and ``torch_dtype``.
    Then the files that make it servable (:func:`~longctx.train.serving_files.write_serving_files`).
    """
    from .rope import legacy_rope_keys
    from .serving_files import write_serving_files

    full = get_model_state_dict(wrapper, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.current().is_main:
        lm = wrapper.lm
        clean = {k.removeprefix("lm."): v.to(dtype) if v.is_floating_point() else v for k, v in full.items()}
        training_value = lm.config.use_cache
        lm.config.use_cache = True  # the exported model is for generation (evaluation)
        try:
            lm.save_pretrained(str(out_dir), state_dict=clean)
        finally:
            lm.config.use_cache = training_value
        config_path = Path(out_dir) / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        dtype_name = str(dtype).removeprefix("torch.")
        config.update(legacy_rope_keys(lm.config.rope_parameters), dtype=dtype_name, torch_dtype=dtype_name)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        write_serving_files(out_dir)  # tokenizer, chat template, generation config; fingerprint last
    dist.barrier()
    return Path(out_dir) if dist.current().is_main else None
