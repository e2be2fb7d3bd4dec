"""Stage 3: long-context fine-tuning. ``python -m longctx.train`` or ``torchrun ... -m longctx.train``.

``config`` (the params), ``data`` (stage 2's samples as batches), ``model`` (load, RoPE, FSDP,
Ulysses), ``stage`` (the loop over the curriculum's stages) and ``launch`` (local torchrun,
SLURM) drive the run; ``dist``, ``rope``, ``ulysses``, ``loss``, ``checkpoint``, ``tiled_mlp``,
``offload`` and ``memory`` are its parts. Imports ``core`` and ``concat`` (the samples' format).
"""

from ..core.exports import lazy_exports

_EXPORTS = {name: ".stage" for name in ("Preempted", "Stopped", "STOP_FILE_ENV", "stop_requested", "lr_factor",
                                        "stage_dir", "train", "train_stage", "step_batches",
                                        "accumulate_gradients", "main")}
_EXPORTS["TrainConfig"] = ".config"
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
