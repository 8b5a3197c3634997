"""Normalization: same answer -> same key, different answer -> different key (both proved)."""

from __future__ import annotations

import random
import unicodedata
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy.config import ModelConfig
from proxy.core.keys import DEFAULTS, IGNORED_FIELDS, cache_key, canonical_bytes, chat_digest, normalize_chat

MODEL = ModelConfig(name="m", litellm_model="openai/gpt-4o-mini", api_base="http://a/v1")
OTHER_BACKEND = ModelConfig(name="m2", litellm_model="openai/gpt-4o-mini", api_base="http://b/v1")
ALIAS = ModelConfig(name="alias", litellm_model="openai/gpt-4o-mini", api_base="http://a/v1")

text = st.text(min_size=0, max_size=40)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "developer"]), "content": text}
)
params = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2, allow_nan=False).filter(lambda v: v != 1),
        "top_p": st.floats(0, 1, allow_nan=False, exclude_max=True),
        "max_tokens": st.integers(1, 10_000),
        "seed": st.integers(-(2**31), 2**31),
        "presence_penalty": st.floats(-2, 2, allow_nan=False).filter(lambda v: v != 0),
        "stop": st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4),
        "n": st.integers(2, 5),
        "response_format": st.just({"type": "json_object"}),
    },
)
requests = st.builds(
    lambda msgs, p: {"model": "m", "messages": msgs, **p},
    st.lists(message, min_size=1, max_size=5),
    params,
)


def _nfd(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFD", value)
    if isinstance(value, dict):
        return {k: _nfd(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nfd(v) for v in value]
    return value


def _shuffled(d: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    items = list(d.items())
    rng.shuffle(items)
    return dict(items)


@settings(max_examples=300)
@given(requests, st.randoms(use_true_random=False), st.data())
def test_equivalent_requests_share_a_key(
    req: dict[str, Any], rng: random.Random, data: st.DataObject
) -> None:
    variant = dict(req)
    variant["messages"] = [_shuffled(_nfd(m), rng) for m in req["messages"]]
    for name, default in DEFAULTS.items():
        if name not in variant and data.draw(st.booleans()):
            variant[name] = default
    if "temperature" in variant and float(variant["temperature"]).is_integer():
        variant["temperature"] = float(variant["temperature"])
    if "stop" in variant and len(variant["stop"]) == 1 and data.draw(st.booleans()):
        variant["stop"] = variant["stop"][0]
    for name in sorted(IGNORED_FIELDS - {"model"}):
        if data.draw(st.booleans()):
            variant[name] = data.draw(st.sampled_from([True, "x", {"k": "v"}, None]))
    variant["tools_absent_marker"] = None  # a null field is "not set"
    assert chat_digest(_shuffled(variant, rng), MODEL) == chat_digest(req, MODEL)


def _mutations(req: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    out = {**req, "messages": [dict(m) for m in req["messages"]]}
    kind = data.draw(
        st.sampled_from(
            ["content", "role", "append", "drop", "temperature", "max_tokens", "seed", "stop", "tools", "n"]
        )
    )
    msgs = out["messages"]
    i = data.draw(st.integers(0, len(msgs) - 1))
    if kind == "content":
        new = data.draw(text)
        assume(unicodedata.normalize("NFC", new) != unicodedata.normalize("NFC", msgs[i]["content"]))
        msgs[i]["content"] = new
    elif kind == "role":
        new = data.draw(st.sampled_from(["system", "user", "assistant", "developer"]))
        assume(new != msgs[i]["role"])
        msgs[i]["role"] = new
    elif kind == "append":
        msgs.append(data.draw(message))
    elif kind == "drop":
        assume(len(msgs) > 1)
        del msgs[i]
    elif kind == "temperature":
        new = data.draw(st.floats(0, 2, allow_nan=False))
        assume(new != req.get("temperature", 1))
        out["temperature"] = new
    elif kind == "max_tokens":
        new = data.draw(st.integers(1, 10_000))
        assume(new != req.get("max_tokens"))
        out["max_tokens"] = new
    elif kind == "seed":
        new = data.draw(st.integers(0, 100))
        assume(new != req.get("seed"))
        out["seed"] = new
    elif kind == "stop":
        new = data.draw(st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4))
        assume(new != req.get("stop"))
        out["stop"] = new
    elif kind == "tools":
        out["tools"] = [
            {
                "type": "function",
                "function": {"name": data.draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True))},
            }
        ]
    else:
        new = data.draw(st.integers(2, 5))
        assume(new != req.get("n"))
        out["n"] = new
    return out


@settings(max_examples=300)
@given(requests, st.data())
def test_any_answer_changing_field_changes_the_key(req: dict[str, Any], data: st.DataObject) -> None:
    changed = _mutations(req, data)
    assert chat_digest(changed, MODEL) != chat_digest(req, MODEL)


@given(requests)
def test_backend_decides_the_key_not_the_alias(req: dict[str, Any]) -> None:
    assert chat_digest(req, MODEL) == chat_digest(req, ALIAS)
    assert chat_digest(req, MODEL) != chat_digest(req, OTHER_BACKEND)


def test_canonical_bytes_are_sorted_and_compact() -> None:
    assert canonical_bytes({"b": 1, "a": {"d": 2, "c": [1.5]}}) == b'{"a":{"c":[1.5],"d":2},"b":1}'


def test_tool_choice_default_depends_on_tools() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert "tool_choice" not in normalize_chat({**base, "tool_choice": "none"}, MODEL)
    assert "tool_choice" not in normalize_chat({**base, "tools": tools, "tool_choice": "auto"}, MODEL)
    assert normalize_chat({**base, "tools": tools, "tool_choice": "none"}, MODEL)["tool_choice"] == "none"


def test_explicit_false_is_not_the_integer_zero() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat_digest({**base, "logprobs": False}, MODEL) == chat_digest(base, MODEL)
    assert chat_digest({**base, "presence_penalty": 0.0}, MODEL) == chat_digest(base, MODEL)


def test_key_layout() -> None:
    digest = "ab" * 32
    assert cache_key("llmcp", "acme", "chat", digest) == f"llmcp:v1:acme:chat:{{{digest}}}"
