"""The vocabulary of the request tables: `Param`, `Shape`, `Rule`, `RequestTable`.

A `Param` is an optional parameter. One constructor call (`boolean()`, `number(0, 2)`,
`integer(1, 128)`, ...) gives its runtime check, the words of its 400 ("expected an integer
between 1 and 128") and its JSON Schema from the same arguments, so the three cannot
disagree. A `Shape` is a field with structure (model, messages, prompt, input): a
hand-written check that names the exact place at fault (`messages[2].role`), written next to
its JSON Schema; tests/unit/core/test_schemas.py holds each pair to the same verdicts. A
`Rule` spans fields (`best_of` >= `n`). A `RequestTable` lists them in the order the
runtime checks them; `request_schema` turns it into the JSON Schema of the request body.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
Check = Callable[[object], bool]

# JSON Schema type -> the Python type orjson parses it as (numbers are checked apart: bool is an int).
_PYTHON_TYPES: dict[str, type] = {
    "boolean": bool,
    "string": str,
    "object": dict,
    "array": list,
}
_ARTICLES = {"boolean": "a boolean", "string": "a string", "object": "an object", "array": "an array"}


@dataclass(frozen=True, slots=True)
class Param:
    """An optional parameter: null or absent means "not set" and always passes."""

    check: Check
    what: str  # what it must be, as the 400 says it: "Invalid value for 'x': expected <what>."
    schema: JSON  # a value that is set (null is added by `request_schema`)


@dataclass(frozen=True, slots=True)
class Shape:
    """A field with structure. `check` gets the value (never None), raises InvalidRequest
    naming the exact place at fault, and returns what the endpoint keeps of it."""

    check: Callable[[Any], Any]
    what: str  # for the description
    schema: JSON  # a value that is set (not null)
    missing: str  # the 400 when the field is required but absent or null


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule across fields, checked once every field has its type."""

    holds: Callable[[dict[str, Any]], bool]
    message: str
    param: str
    schema: JSON | None = None  # the same rule in JSON Schema, where it can be said there


@dataclass(frozen=True, slots=True)
class RequestTable:
    """One endpoint's request body, in the order the runtime checks it: shapes (model first),
    then `one_of`, then params, then rules. Fields it does not name pass through untouched."""

    name: str
    shapes: Mapping[str, Shape]
    params: Mapping[str, Param]
    required: tuple[str, ...]  # present and not null
    one_of: tuple[str, ...] = ()  # at least one present and not null; else the first one's `missing`
    rules: tuple[Rule, ...] = ()


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def number_in(lo: float, hi: float) -> Check:
    return lambda v: is_number(v) and lo <= v <= hi  # type: ignore[operator]


def int_in(lo: float, hi: float) -> Check:
    return lambda v: is_int(v) and lo <= v <= hi  # type: ignore[operator]


def boolean() -> Param:
    return Param(lambda v: isinstance(v, bool), "a boolean", {"type": "boolean"})


def number(lo: int, hi: int) -> Param:
    return Param(
        number_in(lo, hi), f"a number between {lo} and {hi}", {"type": "number", "minimum": lo, "maximum": hi}
    )


def integer(lo: int | None = None, hi: int | None = None, what: str | None = None) -> Param:
    """An integer within the bounds given (none: any integer); `what` overrides the wording."""
    schema: JSON = {"type": "integer"}
    if lo is not None:
        schema["minimum"] = lo
    if hi is not None:
        schema["maximum"] = hi
    wording = {
        (False, False): "an integer",
        (True, True): f"an integer between {lo} and {hi}",
        (True, False): f"an integer of at least {lo}",
        (False, True): f"an integer of at most {hi}",
    }[(lo is not None, hi is not None)]
    check = int_in(-math.inf if lo is None else lo, math.inf if hi is None else hi)
    return Param(check, what or wording, schema)


def string(min_length: int = 0, what: str = "a string") -> Param:
    schema: JSON = {"type": "string", **({"minLength": min_length} if min_length else {})}
    return Param(lambda v: isinstance(v, str) and len(v) >= min_length, what, schema)


def obj() -> Param:
    return Param(lambda v: isinstance(v, dict), "an object", {"type": "object"})


def either(*kinds: str) -> Param:
    """One of several JSON types ("a string or an object")."""
    types = tuple(_PYTHON_TYPES[k] for k in kinds)
    what = " or ".join(_ARTICLES[k] for k in kinds)
    return Param(lambda v: isinstance(v, types), what, {"type": list(kinds)})


def list_of(kind: str) -> Param:
    """An array whose items are all of one JSON type ("a list of strings")."""
    item_type = _PYTHON_TYPES[kind]
    return Param(
        lambda v: isinstance(v, list) and all(isinstance(i, item_type) for i in v),
        f"a list of {kind}s",
        {"type": "array", "items": {"type": kind}},
    )


def choice(*values: str) -> Param:
    """One of a few strings ("'auto' or 'disabled'")."""
    what = " or ".join(f"'{v}'" for v in values)
    return Param(lambda v: v in values, what, {"type": "string", "enum": list(values)})


def anything(what: str) -> Param:
    """A parameter the proxy names but does not check (it passes it on as sent)."""
    return Param(lambda v: True, what, {})


def nullable(schema: JSON) -> JSON:
    """The schema with null allowed: a parameter sent as null is a parameter not set."""
    if not schema:
        return schema
    kinds = schema.get("type")
    if kinds is not None and not {"enum", "const", "anyOf", "oneOf", "allOf", "not"} & schema.keys():
        return {**schema, "type": [*(kinds if isinstance(kinds, list) else [kinds]), "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def request_schema(table: RequestTable) -> JSON:
    """The JSON Schema (2020-12, as OpenAPI 3.1 uses it) of a request body: the fields the
    table names; any other field is allowed, as the runtime passes it on."""
    properties: JSON = {}
    for name, shape in table.shapes.items():
        schema = shape.schema if name in table.required else nullable(shape.schema)
        properties[name] = {**schema, "description": shape.what}
    for name, param in table.params.items():
        properties[name] = {**nullable(param.schema), "description": param.what}
    body: JSON = {"type": "object", "required": list(table.required), "properties": properties}
    notes = [rule.message for rule in table.rules]
    if table.one_of:
        body["anyOf"] = [
            {"required": [n], "properties": {n: {"not": {"type": "null"}}}} for n in table.one_of
        ]
        names = [f"'{n}'" for n in table.one_of]
        notes.insert(0, f"At least one of {', '.join(names[:-1])} or {names[-1]} is required.")
    constraints = [rule.schema for rule in table.rules if rule.schema is not None]
    if constraints:
        body["allOf"] = constraints
    if notes:
        body["description"] = " ".join(notes)
    return body
