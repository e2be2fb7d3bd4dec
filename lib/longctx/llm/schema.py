"""A small JSON-schema subset, checked on every structured answer.

Servers differ in how well they enforce ``response_format`` (grammar-constrained in llama.cpp and
vLLM, best effort elsewhere, absent after a fallback), so the client always parses and validates
the content itself. The subset is what generation prompts need:

* ``type``: ``object``, ``array``, ``string``, ``integer``, ``number``, ``boolean``, ``null``
* objects: ``properties``, ``required``, ``additionalProperties`` (``false`` only is enforced)
* arrays: ``items``, ``minItems``, ``maxItems``
* any: ``enum``; ``title`` and ``description`` are ignored

:func:`check_schema` refuses every other keyword, so nobody believes a constraint is enforced
when it is not.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SchemaError", "check_schema", "schema_problem"]

_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items",
                       "minItems", "maxItems", "enum", "title", "description"})


class SchemaError(ValueError):
    """The schema itself uses something outside the supported subset."""


def check_schema(schema: Any, path: str = "$") -> None:
    """Raise :class:`SchemaError` naming the path if ``schema`` leaves the supported subset."""
    if not isinstance(schema, dict):
        raise SchemaError(f"{path}: expected a schema object, got {type(schema).__name__}")
    unknown = sorted(set(schema) - _KEYWORDS)
    if unknown:
        raise SchemaError(f"{path}: unsupported keyword(s) {unknown}; supported: {sorted(_KEYWORDS)}")
    kind = schema.get("type")
    if kind not in _TYPES and not (kind is None and "enum" in schema):
        raise SchemaError(f"{path}: 'type' must be one of {list(_TYPES)}, got {kind!r}")
    if kind == "object":
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise SchemaError(f"{path}.properties: expected an object")
        for name, sub in properties.items():
            check_schema(sub, f"{path}.{name}")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError(f"{path}.required: expected a list of property names")
        missing = [r for r in required if r not in properties]
        if missing:
            raise SchemaError(f"{path}.required: {missing} not declared in properties")
    if kind == "array" and "items" in schema:
        check_schema(schema["items"], f"{path}[]")


def _type_ok(value: Any, kind: str) -> bool:
    # bool is a subclass of int in Python; JSON keeps them apart.
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    return value is None  # "null"


def schema_problem(value: Any, schema: dict, path: str = "$") -> str | None:
    """First way ``value`` violates ``schema`` as a short message, or None when it conforms.

    ``schema`` is assumed to have passed :func:`check_schema`.
    """
    kind = schema.get("type")
    if kind is not None and not _type_ok(value, kind):
        return f"{path}: expected {kind}, got {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {value!r} not in {schema['enum']}"
    if kind == "object":
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                return f"{path}: missing required key {name!r}"
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(properties))
            if extra:
                return f"{path}: unexpected key(s) {extra}"
        for name, sub in properties.items():
            if name in value:
                problem = schema_problem(value[name], sub, f"{path}.{name}")
                if problem:
                    return problem
    elif kind == "array":
        if "minItems" in schema and len(value) < schema["minItems"]:
            return f"{path}: {len(value)} items, expected at least {schema['minItems']}"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{path}: {len(value)} items, expected at most {schema['maxItems']}"
        if "items" in schema:
            for i, item in enumerate(value):
                problem = schema_problem(item, schema["items"], f"{path}[{i}]")
                if problem:
                    return problem
    return None
