"""The package's layout is its architecture: imports only point down, and no import circle exists.

Layers, lowest first: ``core`` (imports nothing of ours), ``llm`` (``core``), then the stages in
pipeline order, ``generate``, ``concat``, ``train``, ``eval``; the top-level modules (``demo`` and
the command modules ``concatenate``, ``evaluate``, ``figures``) may use everything. A stage uses
an earlier stage only where the data or a shared piece needs it: those edges are listed in
``CROSS_STAGE`` with the reason, so a new one is a decision, not an accident. Every import counts,
also those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "longctx"
LAYERS = ["core", "llm", "generate", "concat", "train", "eval"]
TOP = len(LAYERS)  # the package root's own modules
STAGES = ("generate", "concat", "train", "eval")

# (importer, imported) between two stage folders, with why.
CROSS_STAGE = {
    ("concat.synthetic_books", "generate.walk"): "synthetic QA records follow stage 1's question plan",
    ("concat.stage", "generate.windows"): "the too-long warning names the window cap (stage 1) that fits a slot",
    ("eval.haystack", "generate.corpus"): "RULER's essay haystack reads a corpus the way stage 1 does",
    ("eval.hf_backend", "train.rope"): "the HF backend applies a checkpoint's RoPE settings as training wrote them",
    ("eval.params", "train.rope_settings"): "EvalConfig's rope override has training's type",
    ("eval.hf_server", "train.rope"): "the CPU stand-in server applies a checkpoint's RoPE as the HF backend does",
    ("eval.launch", "train.config"): "evaluation jobs chain after the training jobs of a stage-3 params file",
    ("eval.launch", "train.launch"): "... whose sbatch lines come first (--after-train)",
    ("train.data", "concat.samples"): "stage 3 reads stage 2's samples (the data contract)",
    ("train.launch", "concat.stage"): "the dry run plans a stage's steps from stage 2's params before its samples exist",
}
COMMANDS = ["generate", "concatenate", "train", "evaluate", "figures", "demo", "rehearse"]


def _module_name(path: Path) -> str:
    parts = ("longctx",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = PACKAGE.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (anywhere in its body)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "longctx"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "longctx":
                    continue
                for alias in node.names:  # "from . import dist": the module longctx.train.dist
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if _is_module(sub) else target)
        deps.discard(name)
        graph[name] = deps
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the package itself: __version__ only (checked below)
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else TOP


def _short(module: str) -> str:
    return module.split(".", 1)[1] if "." in module else module


def test_the_package_root_imports_nothing():
    assert import_graph()["longctx"] == set()


def test_every_folder_is_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(LAYERS)


def test_imports_only_point_down():
    up = [f"{m} imports {d}" for m, deps in import_graph().items() for d in sorted(deps) if layer(d) > layer(m)]
    assert not up, "imports pointing up a layer:\n" + "\n".join(up)


def test_cross_stage_imports_are_the_listed_ones():
    found = set()
    for m, deps in import_graph().items():
        for d in deps:
            a, b = _short(m).split(".")[0], _short(d).split(".")[0]
            if a in STAGES and b in STAGES and a != b:
                found.add((_short(m), _short(d)))
    assert found == set(CROSS_STAGE), (
        f"new: {sorted(found - set(CROSS_STAGE))}, gone: {sorted(set(CROSS_STAGE) - found)} "
        "(list a new cross-stage import in CROSS_STAGE with its reason, or move the shared piece down)")


def test_no_import_circle():
    graph = import_graph()
    state, stack, circles = {}, [], []

    def visit(m: str) -> None:  # depth-first; a grey node met again closes a circle
        state[m] = "grey"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "grey":
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "black"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_checks_catch_a_planted_violation(monkeypatch):
    """The checks above can fail: an upward import and a circle planted in the graph are found."""
    real = import_graph()
    planted = {m: set(d) for m, d in real.items()}
    planted["longctx.core.config"].add("longctx.train.rope")           # core -> a stage
    planted["longctx.concat.layout"].add("longctx.concat.plan")          # the old circle
    up = [(m, d) for m, deps in planted.items() for d in deps if layer(d) > layer(m)]
    assert ("longctx.core.config", "longctx.train.rope") in up
    monkeypatch.setattr(sys.modules[__name__], "import_graph", lambda: planted)
    with pytest.raises(AssertionError, match="concat.layout -> longctx.concat.plan"):
        test_no_import_circle()


@pytest.mark.parametrize("package", ["longctx.generate", "longctx.concat", "longctx.train", "longctx.eval"])
def test_stage_packages_offer_their_public_names(package):
    """Every name the stage's driver (``stage.py``) makes public is offered by the package."""
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    missing = set(importlib.import_module(f"{package}.stage").__all__) - set(module.__all__)
    assert not missing, f"{package} does not offer {sorted(missing)}"
    with pytest.raises(AttributeError):
        getattr(module, "no_such_name")


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_people_type_still_run(command):
    """``python -m longctx.<stage>`` for every stage, with warnings as errors (runpy warns when a
    package imports the module it is asked to run)."""
    out = subprocess.run([sys.executable, "-W", "error", "-m", f"longctx.{command}", "--help"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: python -m longctx.{command}")
