"""Bad bodies get a 400 naming the param; good ones pass untouched."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.validation import MAX_NESTING, check_chat, parse_json_object
from proxy.errors import InvalidRequest, MalformedJSON

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("raw", [b"", b"{", b"[1,2]", b'"text"', b"\xff\xfe"])
def test_malformed_bodies(raw: bytes) -> None:
    with pytest.raises(MalformedJSON):
        parse_json_object(raw)


@pytest.mark.parametrize(
    "patch, param",
    [
        ({"model": None}, "model"),
        ({"model": 5}, "model"),
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"n": 0}, "n"),
        ({"n": True}, "n"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tools": {"a": 1}}, "tools"),
    ],
)
def test_bad_fields_name_their_param(patch: dict[str, Any], param: str) -> None:
    body = {**OK, **patch}
    if patch.get("model", "") is None:
        del body["model"]
    if "messages" in patch and patch["messages"] is None:
        del body["messages"]
    with pytest.raises(InvalidRequest) as info:
        check_chat(body)
    assert info.value.param == param
    assert info.value.status == 400


def test_valid_bodies_pass() -> None:
    check_chat(OK)
    check_chat(
        {
            **OK,
            "messages": [{"role": "assistant", "content": None, "tool_calls": []}],
            "temperature": 0,
            "stop": "x",
            "unknown_provider_field": {"a": 1},
        }
    )
    check_chat(
        {
            **OK,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ],
        }
    )


def nested(depth: int) -> bytes:
    """A chat body whose `x` field holds arrays `depth - 1` levels deep (the body is level 1)."""
    inner = "[" * (depth - 1) + "1" + "]" * (depth - 1)
    return b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": ' + inner.encode() + b"}"


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 254, 260, 1000, 1025, 100_000])
def test_nesting_past_the_limit_is_a_400_naming_it(depth: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json_object(nested(depth))
    assert info.value.code == "nesting_too_deep" and str(MAX_NESTING) in info.value.message


def test_nesting_up_to_the_limit_passes_however_many_brackets() -> None:
    assert parse_json_object(nested(MAX_NESTING))["x"]
    wide = b'{"x": [' + b",".join([b"[[1]]"] * 500) + b"]}"  # 1,501 brackets, 4 levels
    assert len(parse_json_object(wide)["x"]) == 500
    deep_in_objects = b'{"a": ' * (MAX_NESTING - 1) + b"1" + b"}" * (MAX_NESTING - 1)
    assert parse_json_object(b'{"b": ' + deep_in_objects + b"}")["b"]
