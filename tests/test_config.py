"""The params loader: unknown keys, wrong types and impossible values name file, line and key."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from longctx.core.config import ParamsError, bad, describe, from_mapping, from_notebook, load_params, param
from longctx.generate.params import GenerateParams


@dataclass
class Inner:
    name: str = param("x", "a name")
    size: int = param(1, "a size", min=1)


@dataclass
class Example:
    count: int = param(3, "how many", min=0)
    ratio: float = param(0.5, "a fraction", min=0.0, max=1.0)
    mode: str = param("a", "mode", choices=("a", "b"))
    tags: list[str] = param(["t"], "labels")
    inner: Inner = param(Inner(), "nested")
    maybe: int | None = param(None, "optional")

    def check(self) -> None:
        if self.count > 100:
            raise bad("count", f"must be <= 100, got {self.count}")


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_valid_file_and_defaults(tmp_path):
    obj = load_params(Example, write(tmp_path, "count: 5\nratio: 1\ninner: {size: 4}\n"))
    assert obj.count == 5 and obj.ratio == 1.0 and isinstance(obj.ratio, float)
    assert obj.inner == Inner("x", 4) and obj.tags == ["t"] and obj.maybe is None
    # mutable defaults are per instance
    a, b = Example(), Example()
    a.tags.append("u")
    assert b.tags == ["t"]


@pytest.mark.parametrize("text, line, key, fragment", [
    ("count: 1\ncuont: 2\n", 2, "cuont", "unknown key for Example"),
    ("count: fifty\n", 1, "count", "expected int, got str 'fifty'"),
    ("count: true\n", 1, "count", "expected int, got bool"),
    ("ratio: 0.2\ncount: -3\n", 2, "count", "must be >= 0, got -3"),
    ("ratio: 1.5\n", 1, "ratio", "must be <= 1.0"),
    ("mode: c\n", 1, "mode", "must be one of ['a', 'b']"),
    ("tags: [1]\n", 1, "tags[0]", "expected str"),
    ("inner: {size: 0}\n", 1, "inner.size", "must be >= 1"),
    ("inner: {colour: red}\n", 1, "inner.colour", "unknown key for Inner"),
    ("count: 101\n", 1, "count", "must be <= 100, got 101"),
])
def test_errors_name_file_line_and_key(tmp_path, text, line, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as err:
        load_params(Example, path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: key '{key}'"), message
    assert fragment in message


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(Example, write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(Example, write(tmp_path, "count: [1\n"))
    with pytest.raises(ParamsError, match="not found"):
        load_params(Example, tmp_path / "missing.yaml")


def test_generate_params_cross_field_checks():
    with pytest.raises(ParamsError, match="key 'medium_chunk_tokens': must be >= small_chunk_tokens \\(4096\\), got 1000"):
        from_mapping(GenerateParams, {"medium_chunk_tokens": 1000})
    with pytest.raises(ParamsError, match="key 'n_hierarchical': must be >= 0, got -1"):
        from_mapping(GenerateParams, {"n_hierarchical": -1})
    with pytest.raises(ParamsError, match="key 'n_diverse': expected int"):
        from_mapping(GenerateParams, {"n_diverse": "fifty"})
    with pytest.raises(ParamsError, match="unknown type 'poetry'"):
        from_mapping(GenerateParams, {"diverse_types": ["poetry"]})
    # the embedded server's slot must hold the widest prompt: numbers in the message
    with pytest.raises(ParamsError, match=r"4096 passage tokens.*slot of 4096 \(embedded_n_ctx 8192 / embedded_parallel 2\)"):
        from_mapping(GenerateParams, {"multi_hop_max_chunks": 2, "multi_hop_min_chunks": 2,
                                      "diverse_types": ["temporal"], "small_chunk_tokens": 4096,
                                      "embedded_parallel": 2})
    # a remote generator has no such limit
    assert from_mapping(GenerateParams, {"llm_base_url": "http://x/v1"}).small_chunk_tokens == 4096


def test_from_notebook_rejects_injected_unknown_names():
    namespace = {"json": __import__("json"), "_before": set()}
    before = set(namespace)
    namespace.update(corpus="austen", n_diverse=5, small_chunk_tokens=512, _private=1)
    params = from_notebook(GenerateParams, namespace, before)
    assert params.n_diverse == 5
    namespace["n_divers"] = 3  # a typo papermill would only warn about
    with pytest.raises(ParamsError, match="unknown key 'n_divers'"):
        from_notebook(GenerateParams, namespace, before)
    namespace.pop("n_divers")
    namespace["n_diverse"] = "many"
    with pytest.raises(ParamsError, match="notebook parameters: key 'n_diverse': expected int"):
        from_notebook(GenerateParams, namespace, before)


def test_describe_lists_every_field_with_its_doc():
    table = describe(GenerateParams)
    assert "| `small_chunk_tokens` | int | `4096` |" in table
    assert table.count("\n") >= 40


def test_base_file_is_read_first_and_errors_name_the_right_file(tmp_path):
    (tmp_path / "common.yaml").write_text("count: 5\nmode: b\ntags: [x, y]\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: common.yaml\ncount: 7\n")
    obj = load_params(Example, child)
    assert (obj.count, obj.mode, obj.tags) == (7, "b", ["x", "y"])  # own key wins, the rest inherited
    grandchild = tmp_path / "g.yaml"
    grandchild.write_text("tags: [z]\nbase: child.yaml\n")
    assert load_params(Example, grandchild).tags == ["z"] and load_params(Example, grandchild).count == 7
    # an error in an inherited key names the base file and its line
    (tmp_path / "bad_base.yaml").write_text("ratio: 0.1\ncuont: 1\n")
    (tmp_path / "uses_bad.yaml").write_text("base: bad_base.yaml\n")
    with pytest.raises(ParamsError, match=rf"^{tmp_path}/bad_base.yaml:2: key 'cuont': unknown key"):
        load_params(Example, tmp_path / "uses_bad.yaml")
    # and an error in the file's own key names that file
    (tmp_path / "own.yaml").write_text("base: common.yaml\n\nmode: c\n")
    with pytest.raises(ParamsError, match=rf"^{tmp_path}/own.yaml:3: key 'mode'"):
        load_params(Example, tmp_path / "own.yaml")


@pytest.mark.parametrize("files, fragment", [
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "a cycle of base files"),
    ({"a.yaml": "base: a.yaml\n"}, "a cycle of base files"),
    ({"a.yaml": "count: 1\nbase: nowhere.yaml\n"}, "nowhere.yaml not found"),
    ({"a.yaml": "base: [1]\n"}, "expected the name of another params file"),
])
def test_base_cycles_and_missing_bases_are_errors_naming_the_file(tmp_path, files, fragment):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ParamsError) as err:
        load_params(Example, tmp_path / "a.yaml")
    message = str(err.value)
    # the file whose base: line closes the cycle or names the missing file, then the key
    assert re.match(rf"^{tmp_path}/[ab].yaml:\d+: key 'base': ", message), message
    assert fragment in message


def test_set_flags_parse_as_yaml_and_a_flag_without_a_value_is_an_error():
    """Every command's --set KEY=VALUE goes through one parser: YAML values, the key stripped,
    and 'KEY' alone refused (it used to become None in two commands)."""
    from longctx.core.config import ParamsError, parse_overrides

    assert parse_overrides(["seed=1", " name = x ", "lengths=[4096, 8192]", "url="]) == {
        "seed": 1, "name": "x", "lengths": [4096, 8192], "url": None}
    for bad_flag in ("seed", "=1"):
        with pytest.raises(ParamsError, match="--set expects KEY=VALUE"):
            parse_overrides([bad_flag])
