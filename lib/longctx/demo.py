"""Run the demo: each stage's notebook headless through papermill, in order.

    python -m longctx.demo            # every notebooks/NN_*.ipynb that has params/demo/NN_*.yaml
    python -m longctx.demo 01 02      # only these stages
    python -m longctx.demo --profile paper 05

Each notebook gets its profile's YAML as papermill parameters (the notebook re-checks them
against its params dataclass) and is written, executed, to ``runs/<profile>/notebooks/``.
"""

from __future__ import annotations

import argparse
import sys
import time

import yaml

from .core.config import project_root, runs_root
from .core.notebook import execute

__all__ = ["stages", "main"]


def stages(profile: str = "demo") -> list[tuple[str, object, object]]:
    """(stage number, notebook path, params path) for every notebook with a params file."""
    root = project_root()
    found = []
    for notebook in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        params = root / "params" / profile / f"{notebook.stem}.yaml"
        if params.is_file():
            found.append((notebook.stem[:2], notebook, params))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longctx.demo", description=__doc__.split("\n")[0])
    parser.add_argument("only", nargs="*", help="stage numbers to run (default: all)")
    parser.add_argument("--profile", default="demo", help="params/<profile>/ to use (default: demo)")
    args = parser.parse_args(argv)
    todo = [s for s in stages(args.profile) if not args.only or s[0] in args.only]
    if not todo:
        print(f"no notebook matches {args.only} with params/{args.profile}/", file=sys.stderr)
        return 2
    root = project_root()
    for number, notebook, params in todo:
        out = runs_root(root) / args.profile / "notebooks" / notebook.name
        shown = out.relative_to(root) if out.is_relative_to(root) else out  # LONGCTX_RUNS may be elsewhere
        print(f"[{number}] {notebook.relative_to(root)} with {params.relative_to(root)} -> {shown}", flush=True)
        started = time.time()
        execute(notebook, yaml.safe_load(params.read_text()) or {}, output=out, stream_output=True)
        print(f"[{number}] done in {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
