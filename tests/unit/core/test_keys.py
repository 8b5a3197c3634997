"""Normalization: same answer -> same key, different answer -> different key (both proved),
with exact text and defaults folded per model (`request_defaults`)."""

from __future__ import annotations

import random
import unicodedata
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy.config import ModelConfig
from proxy.core.fields import CHAT, CHAT_DEFAULTS, Role
from proxy.core.keys import cache_key, canonical_bytes, chat_digest, folds_sampling_defaults, normalize

DEFAULTS = {**CHAT_DEFAULTS.protocol, **CHAT_DEFAULTS.sampling}
IGNORED_FIELDS = frozenset(n for n, rule in CHAT.items() if rule.role is not Role.KEY and rule.bypass is None)

MODEL = ModelConfig(
    name="m", litellm_model="openai/gpt-4o-mini", api_base="http://a/v1", request_defaults="openai"
)
OTHER_BACKEND = ModelConfig(
    name="m2", litellm_model="openai/gpt-4o-mini", api_base="http://b/v1", request_defaults="openai"
)
ALIAS = ModelConfig(
    name="alias", litellm_model="openai/gpt-4o-mini", api_base="http://a/v1", request_defaults="openai"
)
VLLM = ModelConfig(name="v", litellm_model="openai/qwen", api_base="http://vllm:8000/v1")

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
    variant["messages"] = [_shuffled(m, rng) for m in req["messages"]]
    if data.draw(st.booleans()):  # one text part is the same input as the text
        i = data.draw(st.integers(0, len(variant["messages"]) - 1))
        part = [{"type": "text", "text": variant["messages"][i]["content"]}]
        variant["messages"][i] = {**variant["messages"][i], "content": part}
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
        assume(new != msgs[i]["content"])
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

    def normalized(body: dict[str, Any]) -> dict[str, Any]:
        return normalize(body, MODEL, "chat", CHAT, CHAT_DEFAULTS)

    assert "tool_choice" not in normalized({**base, "tool_choice": "none"})
    assert "tool_choice" not in normalized({**base, "tools": tools, "tool_choice": "auto"})
    assert normalized({**base, "tools": tools, "tool_choice": "none"})["tool_choice"] == "none"


def test_explicit_false_is_not_the_integer_zero() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat_digest({**base, "logprobs": False}, MODEL) == chat_digest(base, MODEL)
    assert chat_digest({**base, "presence_penalty": 0.0}, MODEL) == chat_digest(base, MODEL)


def test_key_layout() -> None:
    digest = "ab" * 32
    assert cache_key("llmcp", "acme", "chat", digest) == f"llmcp:v1:acme:chat:{{{digest}}}"


def ask(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def test_text_is_exact_no_unicode_normalization() -> None:
    ohm, omega = "Which code point is \u2126?", "Which code point is \u03a9?"
    assert unicodedata.normalize("NFC", ohm) == unicodedata.normalize("NFC", omega)
    assert chat_digest(ask(ohm), MODEL) != chat_digest(ask(omega), MODEL)
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert chat_digest(ask(composed), MODEL) != chat_digest(ask(decomposed), MODEL)
    url = [{"type": "image_url", "image_url": {"url": "https://x.test/\u00e9.png"}}]
    nfd_url = [{"type": "image_url", "image_url": {"url": "https://x.test/e\u0301.png"}}]
    assert chat_digest(ask(url), MODEL) != chat_digest(ask(nfd_url), MODEL)


def test_one_text_part_is_the_text_but_two_parts_are_not() -> None:
    assert chat_digest(ask([{"type": "text", "text": "hi"}]), MODEL) == chat_digest(ask("hi"), MODEL)
    two = [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]
    assert chat_digest(ask(two), MODEL) != chat_digest(ask("hi"), MODEL)
    extra = [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]
    assert chat_digest(ask(extra), MODEL) != chat_digest(ask("hi"), MODEL)


def test_sampling_defaults_fold_only_where_they_are_known() -> None:
    explicit = ask("hi", temperature=1, top_p=1, presence_penalty=0, frequency_penalty=0.0)
    assert chat_digest(explicit, MODEL) == chat_digest(ask("hi"), MODEL)  # openai
    assert chat_digest(explicit, VLLM) != chat_digest(ask("hi"), VLLM)  # none (auto, own server)
    for name, value in CHAT_DEFAULTS.sampling.items():
        assert chat_digest(ask("hi", **{name: value}), VLLM) != chat_digest(ask("hi"), VLLM), name
    # Protocol defaults fold everywhere.
    protocol = ask("hi", n=1, logprobs=False, stop=[], logit_bias={}, response_format={"type": "text"})
    assert chat_digest(protocol, VLLM) == chat_digest(ask("hi"), VLLM)
    assert chat_digest({**protocol, "parallel_tool_calls": True}, VLLM) == chat_digest(ask("hi"), VLLM)


def test_request_defaults_auto_by_provider() -> None:
    def model(litellm_model: str, api_base: str | None = None, mode: str = "auto") -> ModelConfig:
        return ModelConfig(name="x", litellm_model=litellm_model, api_base=api_base, request_defaults=mode)

    assert folds_sampling_defaults(model("openai/gpt-4o-mini"))
    assert folds_sampling_defaults(model("openai/gpt-4o-mini", "https://api.openai.com/v1"))
    assert folds_sampling_defaults(model("azure/gpt-4o", "https://acme.openai.azure.com"))
    assert folds_sampling_defaults(model("anthropic/claude-3-5-haiku-latest"))
    assert not folds_sampling_defaults(model("openai/llama", "http://localhost:11434/v1"))  # Ollama
    assert not folds_sampling_defaults(model("openai/qwen", "http://vllm:8000/v1"))
    assert not folds_sampling_defaults(model("gemini/gemini-2.0-flash"))
    assert not folds_sampling_defaults(model("openai/gpt-4o-mini", mode="none"))
    assert folds_sampling_defaults(model("openai/qwen", "http://vllm:8000/v1", mode="openai"))


def test_service_tier_is_part_of_the_key() -> None:
    """The answer reports the tier that served it."""
    assert chat_digest(ask("hi", service_tier="flex"), MODEL) != chat_digest(ask("hi"), MODEL)
