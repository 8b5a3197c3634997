"""The two views of a request body cannot drift: what `/openapi.json` describes (and the fuzz
tests generate from) and what the runtime checks accept are held to the same verdicts,
body by body, with a real JSON Schema validator on the OpenAPI side."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, validators

from proxy.core.schemas import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, ROLES, TABLES, RequestTable
from proxy.core.validation import check_chat, check_completions, check_embeddings, check_responses
from proxy.errors import InvalidRequest
from proxy.http.openapi import fast_path_operations

ENDPOINTS: dict[str, tuple[RequestTable, Callable[[dict[str, Any]], object]]] = {
    "/v1/chat/completions": (CHAT, check_chat),
    "/v1/completions": (COMPLETIONS, check_completions),
    "/v1/responses": (RESPONSES, check_responses),
    "/v1/embeddings": (EMBEDDINGS, check_embeddings),
}
PATHS = list(ENDPOINTS)
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "m", "prompt": "x"},
    "/v1/responses": {"model": "m", "input": "x"},
    "/v1/embeddings": {"model": "m", "input": "x"},
}
# Every alternative of a one-of requirement present: removing one field shows whether it is required.
FULL = {
    **VALID,
    "/v1/responses": {**VALID["/v1/responses"], "previous_response_id": "r", "prompt": {"id": "p"}},
}
# Values of every JSON type, and the edges of every check in the tables.
PROBES: list[Any] = [
    None, True, False, 0, 1, 2, 4, 5, 6, -1, -3, 20, 21, 128, 129, 10_000_000, 10_000_001, 2**63,
    0.0, 0.5, 1.0, 1.5, 2.5, -2.5, "", "x", "auto", "disabled", "float", "base64", "user",
    [], [1], [1, 2], ["a"], ["a", ""], ["a", 1], [[1]], [[]], [{}], [{"type": "text"}],
    ["a", "b", "c", "d"], ["a", "b", "c", "d", "e"], {}, {"a": 1},
]  # fmt: skip


def _is_integer(_: Any, value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# JSON Schema counts 1.0 as an integer; orjson parses it as a float, which the runtime refuses
# where an integer is wanted. JSON Schema cannot say "written without a fraction", so this one
# difference is held apart here: the validator below counts only true integers.
StrictValidator = validators.extend(
    Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer)
)


def body_schema(path: str) -> dict[str, Any]:
    schema: dict[str, Any] = fast_path_operations()[path]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    return schema


VALIDATORS = {path: StrictValidator(body_schema(path)) for path in PATHS}


def runtime_accepts(path: str, body: dict[str, Any]) -> bool:
    try:
        ENDPOINTS[path][1](body)
    except InvalidRequest:
        return False
    return True


def schema_accepts(path: str, body: dict[str, Any]) -> bool:
    """The OpenAPI verdict, plus the rules JSON Schema cannot say (best_of >= n), which the
    table marks as such and the description states in words."""
    table = ENDPOINTS[path][0]
    unsaid = [rule for rule in table.rules if rule.schema is None]
    return VALIDATORS[path].is_valid(body) and all(rule.holds(body) for rule in unsaid)


def rejected_param(path: str, body: dict[str, Any]) -> str | None:
    try:
        ENDPOINTS[path][1](body)
    except InvalidRequest as exc:
        return exc.param
    return None


@pytest.mark.parametrize("path", PATHS)
def test_the_schemas_are_valid_json_schema(path: str) -> None:
    Draft202012Validator.check_schema(body_schema(path))
    assert {table.name for table, _ in ENDPOINTS.values()} == {table.name for table in TABLES}


@pytest.mark.parametrize("path", PATHS)
def test_every_documented_field_is_checked_at_runtime_and_nothing_else_is(path: str) -> None:
    documented = set(body_schema(path)["properties"])
    every_name = {name for table in TABLES for name in (*table.shapes, *table.params)}
    for name in sorted(every_name | {"unknown_provider_field"}):
        for value in PROBES:
            body = {**VALID[path], name: value}
            verdict = runtime_accepts(path, body)
            assert verdict == schema_accepts(path, body), (name, value)
            if name not in documented:
                assert verdict, f"{name}={value!r} is refused at runtime but not described in the OpenAPI"
            elif not verdict:
                param = rejected_param(path, body) or ""
                assert param == name or param.startswith((f"{name}[", f"{name}.")), (name, value, param)


@pytest.mark.parametrize("path", PATHS)
def test_required_fields_agree(path: str) -> None:
    schema = body_schema(path)
    table = ENDPOINTS[path][0]
    runtime_required = {
        name for name in schema["properties"] if not runtime_accepts(path, _without(FULL[path], name))
    }
    assert set(schema["required"]) == runtime_required == set(table.required)
    one_of = [branch["required"][0] for branch in schema.get("anyOf", [])]
    assert one_of == list(table.one_of)
    if one_of:
        assert not runtime_accepts(path, _without(FULL[path], *one_of))
        assert not schema_accepts(path, _without(FULL[path], *one_of))
        for name in one_of:  # any one alone will do, but not as null
            alone = {**_without(FULL[path], *one_of), name: FULL[path][name]}
            assert runtime_accepts(path, alone) and schema_accepts(path, alone), name
            as_null = {**alone, name: None}
            assert not runtime_accepts(path, as_null) and not schema_accepts(path, as_null), name


def _without(body: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in names}


def test_the_role_enum_is_the_runtime_role_set() -> None:
    message = body_schema("/v1/chat/completions")["properties"]["messages"]["items"]
    assert message["properties"]["role"]["enum"] == sorted(ROLES)
    assert "function" in ROLES
    roles: list[Any] = [*ROLES, "robot", "", "USER", None, 1, [], {}]  # an unhashable role was once a 500
    for role in roles:
        body = {"model": "m", "messages": [{"role": role, "content": "x"}]}
        known = isinstance(role, str) and role in ROLES
        assert runtime_accepts("/v1/chat/completions", body) is known
        assert schema_accepts("/v1/chat/completions", body) is known


def test_a_rule_the_schema_cannot_say_is_in_its_description() -> None:
    schema = body_schema("/v1/completions")
    for rule in COMPLETIONS.rules:
        assert rule.message in schema["description"]
    assert "'input'" in body_schema("/v1/responses")["description"]


# Bodies near the valid ones: a valid body with one to three fields drawn from their own
# OpenAPI fragment, on both sides of each edge it states (types, bounds, sizes, enums, the
# properties of nested objects), or from anything JSON.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 30) | st.floats(-3, 3, allow_nan=False) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["type", "role", "a"]), inner, max_size=3)
    ),
    max_leaves=12,
)


def near(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values at and around what a schema fragment says, valid and not: mostly of the types it
    names (so one wrong detail is not hidden behind another), sometimes anything JSON."""
    typed: list[st.SearchStrategy[Any]] = []
    if "properties" in schema:  # an object; its anyOf branches are more constraints on it
        typed += [_object(schema, branch) for branch in [{}, *schema.get("anyOf", ())]]
    else:
        typed += [near(branch) for branch in schema.get("anyOf", ())]
    if "enum" in schema:
        typed += [st.sampled_from(schema["enum"])] * 3
    if "const" in schema:
        typed.append(st.just(schema["const"]))
    kinds = schema.get("type", [])
    typed += [_of_type(kind, schema) for kind in (kinds if isinstance(kinds, list) else [kinds])]
    return st.one_of(*typed, *typed, *typed, JSON_VALUES)


def _object(schema: dict[str, Any], branch: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    fields = {
        name: near(sub) for name, sub in {**schema["properties"], **branch.get("properties", {})}.items()
    }
    required = {name: fields[name] for name in {*schema.get("required", ()), *branch.get("required", ())}}
    return st.fixed_dictionaries(required, optional={n: v for n, v in fields.items() if n not in required})


def _of_type(kind: str, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if kind in ("integer", "number"):
        edges = [
            e + d for e in (schema.get("minimum"), schema.get("maximum")) if e is not None for d in (-1, 0, 1)
        ]
        numbers = st.sampled_from(edges) | st.integers(-3, 30) if edges else st.integers()
        return numbers | st.floats(-3, 3, allow_nan=False) if kind == "number" else numbers
    if kind == "array":  # sizes at the edges the schema states
        most = schema.get("maxItems", 2)
        sizes = st.sampled_from(sorted({0, 1, 2, *((most, most + 1) if most < 10 else ())}))
        items = near(schema.get("items", {}))
        return sizes.flatmap(lambda n: st.lists(items, min_size=n, max_size=n))
    simple = {
        "string": st.text(max_size=3),
        "boolean": st.booleans(),
        "null": st.none(),
        "object": JSON_VALUES,
    }
    return simple[kind]


def bodies(path: str) -> st.SearchStrategy[dict[str, Any]]:
    """A valid body (mostly) with one to three fields drawn near their schema; the structured
    fields, where drift is likeliest, are drawn three times as often."""
    properties = {**body_schema(path)["properties"], "unknown_provider_field": {}}
    table = ENDPOINTS[path][0]
    names = sorted(properties) + [*table.shapes, *table.one_of] * 3
    chosen = st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)
    drawn = chosen.flatmap(lambda keys: st.fixed_dictionaries({k: near(properties[k]) for k in keys}))
    return st.tuples(st.integers(0, 4), drawn).map(lambda t: {**(VALID[path] if t[0] else {}), **t[1]})


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_schema_and_runtime_give_the_same_verdict(path: str, data: st.DataObject) -> None:
    body = data.draw(bodies(path))
    assert runtime_accepts(path, body) == schema_accepts(path, body), body


SHAPED = [(path, name) for path, (table, _) in ENDPOINTS.items() for name in table.shapes]


@pytest.mark.parametrize(("path", "name"), SHAPED)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_each_structured_field_gets_the_same_verdict(path: str, name: str, data: st.DataObject) -> None:
    body = {**VALID[path], name: data.draw(near(body_schema(path)["properties"][name]))}
    assert runtime_accepts(path, body) == schema_accepts(path, body), body


CASES = [
    ("/v1/chat/completions", {"messages": [{"role": "assistant"}]}, True),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": None}]}, False),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": []}]}, True),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}] * 4096}, True),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}] * 4097}, False),
    ("/v1/chat/completions", {"n": 1.0}, False),  # orjson keeps 1.0 a float; the strict validator agrees
    ("/v1/completions", {"prompt": ["a", [1, 2]]}, True),
    ("/v1/completions", {"prompt": [[1], []]}, False),
    ("/v1/completions", {"prompt": ""}, True),
    ("/v1/completions", {"n": 3, "best_of": 2}, False),
    ("/v1/completions", {"n": 2, "best_of": 2, "stream": True}, False),
    ("/v1/completions", {"best_of": 1, "stream": True}, True),
    ("/v1/responses", {"input": None, "previous_response_id": "r"}, True),
    ("/v1/responses", {"input": None, "prompt": {"id": "p"}}, True),
    ("/v1/responses", {"input": [{}]}, True),
    ("/v1/embeddings", {"input": [[1], [2, 3]]}, True),
    ("/v1/embeddings", {"input": [1, [1]]}, False),
    ("/v1/embeddings", {"encoding_format": ""}, True),  # a falsy value means 'float'
    ("/v1/embeddings", {"user": 5}, True),  # ignored, as it always was
]


@pytest.mark.parametrize(("path", "patch", "accepted"), CASES)
def test_known_bodies(path: str, patch: dict[str, Any], accepted: bool) -> None:
    body = {**VALID[path], **patch}
    assert runtime_accepts(path, body) is accepted
    assert schema_accepts(path, body) is accepted
