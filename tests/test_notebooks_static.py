"""Committed notebooks: no outputs, a house-template parameters cell that matches the demo YAML."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from longctx.core.config import to_dict
from longctx.core.stages import params_class

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def parameters_cell(path):
    tagged = [c for c in cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
    return "".join(tagged[0]["source"])


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no NN_*.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    for i, cell in enumerate(cells(path)):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} cell {i} has outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_is_literals_equal_to_demo_params(path):
    tree = ast.parse(parameters_cell(path))
    values = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name = node.target.id
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        else:
            raise AssertionError(f"{path.name}: the parameters cell may only assign names (line {node.lineno})")
        # papermill does not re-evaluate expressions: literals only
        values[name] = ast.literal_eval(node.value)
    demo = ROOT / "params" / "demo" / f"{path.stem}.yaml"
    assert demo.is_file(), f"{path.name} has no demo params file {demo.relative_to(ROOT)}"
    # The notebook must behave like `python -m longctx.<stage> --params <demo yaml>`: a key the
    # YAML sets has the YAML's value, any other key the dataclass default.
    from_yaml = yaml.safe_load(demo.read_text()) or {}
    defaults = to_dict(params_class(path.stem)())
    missing = sorted(set(from_yaml) - set(values))
    assert not missing, f"{path.name}: parameters cell lacks {missing} from {demo.relative_to(ROOT)}"
    for key, value in values.items():
        assert key in defaults, f"{path.name}: parameter {key!r} is not a field of {params_class(path.stem).__name__}"
        expected = from_yaml.get(key, defaults[key])
        assert value == expected, f"{path.name}: {key} = {value!r} but {demo.relative_to(ROOT) if key in from_yaml else 'the default'} says {expected!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_is_a_title(path):
    first = cells(path)[0]
    assert first["cell_type"] == "markdown" and "".join(first["source"]).startswith("# ")
