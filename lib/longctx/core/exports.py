"""Names a stage package re-exports from its modules, imported on first use.

A stage package (``longctx.generate``, ``longctx.train``, ...) offers the names notebooks and
scripts use (``from longctx.generate import run``) without importing its modules when the package
is imported. Eager imports would load torch for ``import longctx.train.stage.rope``, and would make
``python -m longctx.generate.corpus_shards`` warn that the module ran after the package had
already imported it (runpy's RuntimeWarning). PEP 562's module ``__getattr__`` does it lazily.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` re-exporting ``name -> ".module"`` of ``table``."""

    def __getattr__(name: str) -> Any:
        try:
            module = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(module, package), name)

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__
