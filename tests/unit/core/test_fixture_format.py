"""Fixture lines: a stable format, and every check a line must pass before it is loaded."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from proxy.config import Config, parse_config
from proxy.core.apis import CHAT
from proxy.core.fixture_format import Fixture, FixtureError, parse_line, place

ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
REQUEST = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def config(**cache: Any) -> Config:
    return parse_config(
        {
            "models": [{"name": "m", "litellm_model": "openai/gpt-4o-mini"}],
            "tenants": [{"name": n, "api_keys": [f"sk-{n}-123456"]} for n in ("acme", "globex")],
            "cache": cache,
        },
        {},
    )


def line(**changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "tenant": "acme",
        "endpoint": "chat",
        "model": "m",
        "request": REQUEST,
        "answer": ANSWER,
        "meta": {"prompt_tokens": 1, "completion_tokens": 1, "stored_at_ms": 5},
    }
    return Fixture(**{**fields, **changes}).line()


def test_a_line_has_a_fixed_field_order_and_sorted_objects() -> None:
    raw = Fixture("acme", "chat", "m", {"z": 1, "a": {"y": 2, "b": 3}}, {}, {}).line()
    assert raw == (
        b'{"key_version":"v1","key_rules":2,"tenant":"acme","endpoint":"chat","model":"m",'
        b'"request":{"a":{"b":3,"y":2},"z":1},"answer":{},"meta":{}}'
    )
    assert parse_line(raw) == Fixture("acme", "chat", "m", {"z": 1, "a": {"y": 2, "b": 3}}, {}, {})


def test_a_good_line_is_keyed_with_the_current_rules() -> None:
    cfg = config()
    placed = place(parse_line(line()), cfg)
    assert (placed.namespace, placed.kind, placed.rekeyed) == ("acme", "chat", False)
    assert placed.digest == CHAT.digest(REQUEST, cfg.model_index["m"])
    old = place(parse_line(line(meta={"digest": "0" * 64})), cfg)
    assert old.rekeyed and old.digest == placed.digest
    assert place(parse_line(line(meta={"digest": placed.digest})), cfg).rekeyed is False


def test_another_tenant_and_the_shared_namespace() -> None:
    assert place(parse_line(line()), config(), tenant="globex").namespace == "globex"
    assert place(parse_line(line(tenant="shared")), config(scope="shared")).namespace == "shared"
    assert place(parse_line(line()), config(scope="shared")).namespace == "shared"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{nope", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"tenant": "acme"}', "missing answer, endpoint, meta, model, request"),
        (line(endpoint="images"), "unknown endpoint 'images'"),
        (line(tenant="initech"), "tenant 'initech' is not configured"),
        (line(model="gpt-5"), "model 'gpt-5' is not configured"),
        (line(request={"messages": "hello"}), "request: "),
        (line(request={**REQUEST, "store": True}), "request: never cached"),
        (line(answer={**ANSWER, "choices": []}), "answer: not a whole answer"),
        (line(answer={**ANSWER, "choices": [{**ANSWER["choices"][0], "finish_reason": None}]}), "whole"),
        (line(meta={"prompt_tokens": -1}), "meta.prompt_tokens must be a whole number"),
        (line(endpoint="embeddings", request={"input": ["a", "b"]}, answer={}), "exactly one input"),
        (
            line(endpoint="embeddings", request={"input": "a"}, answer={"embedding": "%%%"}),
            "not valid base64",
        ),
        (
            line(
                endpoint="embeddings",
                request={"input": "a"},
                answer={"embedding": base64.b64encode(b"abc").decode()},
            ),
            "not a float32 vector",
        ),
    ],
)
def test_bad_lines_say_why(raw: bytes, message: str) -> None:
    with pytest.raises(FixtureError) as info:
        place(parse_line(raw), config())
    assert message in str(info.value)


def test_an_answer_over_the_entry_cap_is_refused() -> None:
    big = {
        **ANSWER,
        "choices": [{**ANSWER["choices"][0], "message": {"role": "assistant", "content": "x" * 600}}],
    }
    with pytest.raises(FixtureError, match="max_entry_bytes"):
        place(parse_line(line(answer=big)), config(max_entry_bytes=512))


def test_an_embeddings_line_keeps_its_vector() -> None:
    vector = b"\x00\x00\x80\x3f" * 3
    raw = line(
        endpoint="embeddings",
        request={"input": "a", "dimensions": 3},
        answer={"embedding": base64.b64encode(vector).decode()},
    )
    placed = place(parse_line(raw), config())
    assert (placed.kind, placed.vector) == ("emb", vector)
    assert orjson.loads(raw)["request"] == {"dimensions": 3, "input": "a"}
