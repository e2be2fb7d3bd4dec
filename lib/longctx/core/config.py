"""Typed parameters: YAML files and papermill-injected values become validated dataclasses.

The YAML in ``params/`` is only a surface. Every stage declares its parameters as a dataclass
whose fields are made with :func:`param` (default, one doc line, optional bounds). This module
turns a mapping into that dataclass and refuses anything it does not understand:

* an unknown key          -> ``params/demo/01_generate_qa.yaml:7: unknown key 'n_divers' ...``
* a wrong type            -> ``...: key 'n_diverse': expected int, got str 'fifty'``
* an impossible value     -> ``...: key 'n_diverse': must be >= 0, got -3``
* a cross-field violation -> raised by the dataclass's ``check()`` through :func:`bad`.

A params file may start from another with ``base: other.yaml`` (a path relative to the file):
the base's keys are read first, the file's own keys replace them (whole values, no deep merge).
Bases chain; a missing base or a cycle is an error naming the file and line, and an error in an
inherited key names the base file's line (:func:`read_params_file`).

The same check runs for values papermill injects into a notebook (:func:`from_notebook`),
because papermill itself only warns about unknown parameters.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")

__all__ = [
    "ParamsError",
    "param",
    "bad",
    "from_mapping",
    "load_params",
    "parse_overrides",
    "read_params_file",
    "from_notebook",
    "to_dict",
    "describe",
    "project_root",
    "resolve_path",
    "runs_root",
    "RUNS_ENV",
]


class ParamsError(ValueError):
    """A parameter file or mapping does not fit its dataclass. The message names source and key."""


class _FieldError(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


def param(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
          choices: typing.Sequence[Any] | None = None) -> Any:
    """A dataclass field with a doc line and optional bounds checked on load.

    Mutable defaults (lists, dicts, dataclasses) are copied per instance.
    """
    meta = {"doc": doc, "min": min, "max": max, "choices": tuple(choices) if choices else None}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        import copy

        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def bad(key: str, message: str) -> _FieldError:
    """Build the error a dataclass's ``check()`` raises for a cross-field violation of ``key``."""
    return _FieldError(key, message)


# --------------------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise _FieldError. Only lossless conversions happen
    (int -> float, list -> tuple, mapping -> nested dataclass)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _convert(value, arg, key)
            except _FieldError as err:
                errors.append(err.message)
        raise _FieldError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {_short(value)}")
    if tp is type(None):
        if value is None:
            return None
        raise _FieldError(key, f"expected null, got {type(value).__name__} {_short(value)}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise _FieldError(key, f"expected one of {list(get_args(tp))}, got {_short(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _FieldError(key, f"expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return _build(tp, value, prefix=f"{key}.")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _FieldError(key, f"expected a list, got {type(value).__name__} {_short(value)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _FieldError(key, f"expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _FieldError(key, f"expected a mapping, got {type(value).__name__} {_short(value)}")
        ktp, vtp = get_args(tp) or (Any, Any)
        return {_convert(k, ktp, key): _convert(v, vtp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _FieldError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {_short(value)}")


def _check_bounds(field: dataclasses.Field, value: Any, key: str) -> None:
    meta = field.metadata
    if value is None:
        return
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if lo is not None and value < lo:
        raise _FieldError(key, f"must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise _FieldError(key, f"must be <= {hi}, got {value}")
    if choices is not None and value not in choices:
        raise _FieldError(key, f"must be one of {list(choices)}, got {_short(value)}")


def _build(cls: type[T], mapping: dict[str, Any], prefix: str = "") -> T:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in mapping:
        if key not in fields:
            raise _FieldError(prefix + str(key), f"unknown key for {cls.__name__}; valid keys: "
                              f"{', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in mapping.items():
        value = _convert(value, hints[name], prefix + name)
        _check_bounds(fields[name], value, prefix + name)
        values[name] = value
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except _FieldError as err:
            raise _FieldError(prefix + err.key, err.message) from None
    return obj


# --------------------------------------------------------------------------- entry points


def from_mapping(cls: type[T], mapping: dict[str, Any], source: str = "<params>",
                 lines: dict[str, int | str] | None = None) -> T:
    """Build and validate ``cls`` from ``mapping``; errors name ``source`` (and line when known)."""
    if not isinstance(mapping, dict):
        raise ParamsError(f"{source}: expected a mapping of parameter names to values, "
                          f"got {type(mapping).__name__}")
    try:
        return _build(cls, mapping)
    except _FieldError as err:
        top = err.key.split(".")[0].split("[")[0]
        loc = lines.get(top) if lines else None  # a line number, or "file:line" (inherited keys)
        where = loc if isinstance(loc, str) else f"{source}:{loc}" if loc else source
        raise ParamsError(f"{where}: key '{err.key}': {err.message}") from None


def _yaml_with_lines(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of parameter names to values, "
                          f"got {type(data).__name__}")
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            lines[key_node.value] = key_node.start_mark.line + 1
    return data, lines


BASE_KEY = "base"


def read_params_file(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The mapping a params file stands for, its ``base:`` chain resolved, and where each key was
    set (``"file:line"``). Launchers that read params files themselves should use this, not a
    bare ``yaml.safe_load``, so inherited keys are not lost."""
    return _read_chain(Path(path), [])


def _read_chain(path: Path, chain: list[Path]) -> tuple[dict[str, Any], dict[str, str]]:
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    data, lines = _yaml_with_lines(path)
    where = {k: f"{path}:{lines[k]}" for k in data if k in lines}
    if BASE_KEY not in data:
        return data, where
    base = data.pop(BASE_KEY)
    at = where.pop(BASE_KEY, str(path))
    if not isinstance(base, str) or not base.strip():
        raise ParamsError(f"{at}: key '{BASE_KEY}': expected the name of another params file, got {_short(base)}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ParamsError(f"{at}: key '{BASE_KEY}': {base_path} not found")
    seen = chain + [path.resolve()]
    if base_path.resolve() in seen:
        cycle = " -> ".join(str(p) for p in seen + [base_path.resolve()])
        raise ParamsError(f"{at}: key '{BASE_KEY}': a cycle of base files: {cycle}")
    base_data, base_where = _read_chain(base_path, seen)
    return {**base_data, **data}, {**base_where, **where}


def load_params(cls: type[T], path: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> T:
    """Read the YAML at ``path`` (if any, with its ``base:`` chain), apply ``overrides`` and
    validate into ``cls``."""
    data: dict[str, Any] = {}
    lines: dict[str, str] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        data, lines = read_params_file(path)
        source = str(path)
    if overrides:
        data = {**data, **overrides}
        source = f"{source} + overrides" if path is not None else "<overrides>"
    return from_mapping(cls, data, source=source, lines=lines if not overrides else None)


def parse_overrides(items: typing.Iterable[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` flags of a command line -> ``{key: value}``, each value parsed as YAML
    (``--set seed=1`` gives an int); the result is checked like a file by :func:`load_params`."""
    import yaml

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def from_notebook(cls: type[T], namespace: dict[str, Any], before: typing.Iterable[str]) -> T:
    """Validate the parameters a notebook holds after papermill injected its values.

    ``before`` is the set of global names that existed before the ``parameters`` cell ran. Every
    plain value defined since (parameters cell plus papermill's injected cell) must be a field
    of ``cls``: a misspelt ``-p n_divers 3`` is an error here, not a silently ignored warning.
    """
    before = set(before)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    mapping = {}
    for name, value in namespace.items():
        if name in before or name.startswith("_") or callable(value) or isinstance(value, types.ModuleType):
            continue
        if name in ("In", "Out", "exit", "quit", "get_ipython"):
            continue
        mapping[name] = value
    unknown = sorted(set(mapping) - fields)
    if unknown:
        raise ParamsError(f"notebook parameters: unknown key '{unknown[0]}' for {cls.__name__} "
                          f"(injected by papermill?); valid keys: {', '.join(sorted(fields))}")
    return from_mapping(cls, mapping, source="notebook parameters")


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data view of a params dataclass (for manifests and papermill)."""
    return dataclasses.asdict(obj)


def describe(cls: type) -> str:
    """A markdown table of the fields of ``cls``: name, type, default, doc line."""
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"| `{f.name}` | {_type_name(hints[f.name])} | `{default!r}` | {f.metadata.get('doc', '')} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- paths


def project_root(start: str | Path | None = None) -> Path:
    """The checkout root: the nearest folder above ``start`` (default: cwd) holding both
    ``pyproject.toml`` and ``params/``. Relative paths in params resolve against it, so a
    notebook run from ``notebooks/`` and a job run from the root read the same files."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "params").is_dir():
            return folder
    return here


RUNS_ENV = "LONGCTX_RUNS"


def runs_root(root: Path | None = None) -> Path:
    """Where every output goes: ``$LONGCTX_RUNS`` when set (e.g. a scratch file system on a
    cluster; relative to the project root if relative), else ``<project root>/runs``."""
    env = os.environ.get(RUNS_ENV, "").strip()
    base = root or project_root()
    return (base / Path(env).expanduser()) if env else base / "runs"


def resolve_path(path: str | Path, root: Path | None = None) -> Path:
    """``path`` if absolute, else relative to :func:`project_root`; a relative path under
    ``runs/`` (every stage's outputs, caches and logs) resolves under :func:`runs_root`, so the
    one variable ``LONGCTX_RUNS`` moves all of them."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if p.parts and p.parts[0] == "runs" and os.environ.get(RUNS_ENV, "").strip():
        return runs_root(root).joinpath(*p.parts[1:])
    return (root or project_root()) / p
