"""The JSON-schema subset every structured answer is validated against."""

from __future__ import annotations

import pytest

from longctx.llm.schema import SchemaError, check_schema, schema_problem

QA_LIST = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
            "type": "object", "required": ["question", "answer"], "additionalProperties": False,
            "properties": {"question": {"type": "string"}, "answer": {"type": "string"}}}},
        "kind": {"type": "string", "enum": ["temporal", "thematic"]},
        "score": {"type": "number"}, "count": {"type": "integer"}, "ok": {"type": "boolean"},
    },
    "required": ["items"],
}


def test_valid_document_passes():
    check_schema(QA_LIST)
    doc = {"items": [{"question": "q", "answer": "a"}], "kind": "temporal", "score": 1, "count": 3, "ok": True}
    assert schema_problem(doc, QA_LIST) is None


@pytest.mark.parametrize("doc, expected", [
    ([], "$: expected object, got list"),
    ({}, "$: missing required key 'items'"),
    ({"items": []}, "$.items: 0 items, expected at least 1"),
    ({"items": [{"question": "q", "answer": "a"}] * 3}, "$.items: 3 items, expected at most 2"),
    ({"items": [{"question": "q"}]}, "$.items[0]: missing required key 'answer'"),
    ({"items": [{"question": "q", "answer": 1}]}, "$.items[0].answer: expected string, got int"),
    ({"items": [{"question": "q", "answer": "a", "x": 1}]}, "$.items[0]: unexpected key(s) ['x']"),
    ({"items": [{"question": "q", "answer": "a"}], "kind": "funny"}, "$.kind: 'funny' not in"),
    ({"items": [{"question": "q", "answer": "a"}], "count": True}, "$.count: expected integer, got bool"),
    ({"items": [{"question": "q", "answer": "a"}], "count": 2.5}, "$.count: expected integer, got float"),
    ({"items": [{"question": "q", "answer": "a"}], "score": "1"}, "$.score: expected number, got str"),
    ({"items": [{"question": "q", "answer": "a"}], "ok": 1}, "$.ok: expected boolean, got int"),
])
def test_violations_are_named_with_their_path(doc, expected):
    assert schema_problem(doc, QA_LIST).startswith(expected)


@pytest.mark.parametrize("schema, message", [
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "x+"}}}, r"\$\.a: unsupported keyword"),
    ({"type": "text"}, "'type' must be one of"),
    ({"type": "object", "properties": {}, "required": ["a"]}, r"\['a'\] not declared"),
    ([], "expected a schema object"),
])
def test_schemas_outside_the_subset_are_refused(schema, message):
    with pytest.raises(SchemaError, match=message):
        check_schema(schema)
