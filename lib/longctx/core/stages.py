"""The stages: notebook name -> the dataclass its parameters parse into.

The demo runner, the params tests and ``params_class`` below use this one table; a new stage
adds one line here, a notebook, and ``params/<profile>/<notebook>.yaml`` files.
"""

from __future__ import annotations

import importlib

__all__ = ["STAGES", "params_class"]

STAGES: dict[str, str] = {
    "01_generate_qa": "longctx.generate.params:GenerateParams",
    "02_concatenate": "longctx.concat.stage:ConcatConfig",
    "03_train": "longctx.train.config:TrainConfig",
    "04_evaluate": "longctx.eval.params:EvalConfig",
    "05_figures": "longctx.eval.figures:FiguresConfig",
}


def params_class(stage: str) -> type:
    """The params dataclass of ``stage`` (a notebook stem such as ``01_generate_qa``)."""
    try:
        module, name = STAGES[stage].split(":")
    except KeyError:
        raise KeyError(f"no stage named {stage!r}; known: {sorted(STAGES)}") from None
    return getattr(importlib.import_module(module), name)
