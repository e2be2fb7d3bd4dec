"""Notebook plumbing shared by every stage notebook and the notebook tests.

A notebook records the values its tests assert on with :func:`record`; :func:`execute` runs a
notebook headless through papermill (output under ``runs/``) and returns those values. The
parameters a notebook accepts are checked with :func:`longctx.core.config.from_notebook`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import project_root, runs_root

RECORD_MIME = "application/vnd.longctx.record+json"

__all__ = ["record", "execute", "read_records", "RECORD_MIME"]


def record(**values: Any) -> None:
    """Show ``values`` in the notebook and store them as a machine-readable output.

    Values must be JSON-serialisable. Tests read them back with :func:`read_records`.
    """
    from IPython.display import display

    payload = json.loads(json.dumps(values, default=str))
    display({RECORD_MIME: payload, "text/plain": json.dumps(payload, indent=1)}, raw=True)


def read_records(notebook_path: str | Path) -> dict[str, Any]:
    """All values recorded by :func:`record` in an executed notebook, merged in cell order."""
    nb = json.loads(Path(notebook_path).read_text(encoding="utf-8"))
    merged: dict[str, Any] = {}
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if RECORD_MIME in data:
                merged.update(data[RECORD_MIME])
    return merged


def execute(notebook: str | Path, parameters: dict[str, Any] | None = None,
            output: str | Path | None = None, kernel_name: str | None = None,
            timeout: int | None = None, stream_output: bool = False) -> dict[str, Any]:
    """Run ``notebook`` headless with papermill and return what it recorded.

    The executed copy goes to ``output`` (default ``runs/notebooks/<name>``); it runs with the
    project root as working directory so relative params paths mean the same as on the CLI.
    ``stream_output`` copies what the notebook prints (the stages' progress lines, training steps)
    to this process's stdout/stderr as it happens (papermill's CLI: ``--log-output``).
    """
    import sys

    import papermill

    root = project_root()
    notebook = Path(notebook)
    if not notebook.is_absolute():
        notebook = root / notebook
    output = Path(output) if output else runs_root(root) / "notebooks" / notebook.name
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(notebook), str(output), parameters=parameters or {}, cwd=str(root),
        kernel_name=kernel_name, progress_bar=False, execution_timeout=timeout,
        stdout_file=sys.stdout if stream_output else None, stderr_file=sys.stderr if stream_output else None)
    return read_records(output)
