"""Every request field the official openai SDK knows has a classification (key, ignore,
own, bypass), per endpoint: a new SDK field fails here instead of being cached wrongly."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types import completion_create_params, embedding_create_params
from openai.types.chat import completion_create_params as chat_create_params
from openai.types.responses import response_create_params

from proxy.core.apis import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES
from proxy.core.fields import Fields, Role, bypass_reason, keyed, role_of

SDK_PARAMS = {
    "chat": (chat_create_params, CHAT.fields),
    "completions": (completion_create_params, COMPLETIONS.fields),
    "responses": (response_create_params, RESPONSES.fields),
    "embeddings": (embedding_create_params, EMBEDDINGS.fields),
}
# Fields we classify that the SDK does not name (provider extensions, documented).
EXTENSIONS = {"embeddings": {"input_type", "truncate"}}


def sdk_fields(module: Any) -> set[str]:
    """Every parameter of the module's `*CreateParams*` TypedDicts (stream and non-stream)."""
    names: set[str] = set()
    for attr in dir(module):
        cls = getattr(module, attr)
        if attr.endswith(("CreateParams", "CreateParamsBase", "Streaming", "NonStreaming")) and isinstance(
            cls, type
        ):
            for klass in cls.__mro__:
                names |= set(getattr(klass, "__annotations__", {}))
    return names


@pytest.mark.parametrize("endpoint", sorted(SDK_PARAMS))
def test_every_sdk_field_is_classified(endpoint: str) -> None:
    module, fields = SDK_PARAMS[endpoint]
    known = sdk_fields(module)
    assert "model" in known and (endpoint == "embeddings" or "stream" in known)  # the walk found them
    missing = sorted(known - set(fields))
    assert not missing, f"{endpoint}: classify these SDK fields in proxy/core/fields.py: {missing}"
    extra = set(fields) - known - EXTENSIONS.get(endpoint, set())
    assert not extra, f"{endpoint}: fields the SDK does not have (typo, or document as extension): {extra}"


def test_unknown_fields_are_keyed() -> None:
    assert role_of(CHAT.fields, "x_provider_option") is Role.KEY
    assert keyed(CHAT.fields, {"x_provider_option": 1, "user": "u", "model": "m"}) == {"x_provider_option": 1}


@pytest.mark.parametrize(
    ("fields", "body", "reason"),
    [
        (CHAT.fields, {"store": True}, "store"),
        (CHAT.fields, {"store": False}, None),
        (CHAT.fields, {"metadata": {"a": "b"}}, None),
        (RESPONSES.fields, {"store": True}, "store"),
        (RESPONSES.fields, {"background": True}, "background"),
        (RESPONSES.fields, {"background": False}, None),
        (RESPONSES.fields, {"conversation": "conv_abc"}, "conversation"),
        (RESPONSES.fields, {"conversation": {"id": "conv_abc"}}, "conversation"),
        (RESPONSES.fields, {"prompt": {"id": "pmpt_1"}}, "prompt"),
        (RESPONSES.fields, {"prompt": {"id": "pmpt_1", "version": "2"}}, None),
        (RESPONSES.fields, {"prompt": None, "conversation": None}, None),
        (COMPLETIONS.fields, {"store": True}, None),  # not a completions field: keyed, forwarded
    ],
)
def test_bypass_values(fields: Fields, body: dict[str, Any], reason: str | None) -> None:
    assert bypass_reason(fields, body) == reason


def test_only_the_proxys_own_fields_are_not_forwarded() -> None:
    assert CHAT.own_fields == {"model", "stream", "stream_options"}
    assert COMPLETIONS.own_fields == {"model", "stream", "stream_options"}
    assert RESPONSES.own_fields == {"model", "stream"}
    assert EMBEDDINGS.own_fields == {"model", "encoding_format"}
