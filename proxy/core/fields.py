"""What the cache does with every request field, per endpoint: the one classification.

    KEY      can change the answer: in the cache key, forwarded to the provider
    IGNORE   delivery, accounting or logging only: forwarded, not in the key
    OWN      the proxy's own: `model` (replaced by the upstream name), `stream` and
             `stream_options` (the proxy streams and asks for usage itself),
             `encoding_format` of embeddings (stored once, served as either)
    + bypass a value that needs server-side state or has side effects (`store: true`,
             `background: true`, a `conversation`, a prompt template without a pinned
             `version`): forwarded, never looked up or stored (`X-Cache: BYPASS`)

Fields a table does not name (provider extensions) are KEY: forwarded and keyed. The
official openai SDK's `*CreateParams` types are the list of "every field": a test walks
them and fails on a field with no classification here (tests/unit/core/test_fields.py).
docs/keyspace.md has the same tables for readers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Role(Enum):
    KEY = "key"
    IGNORE = "ignore"
    OWN = "own"


@dataclass(frozen=True, slots=True)
class FieldRule:
    role: Role
    # Values that need the provider's server-side state: such a request is never cached.
    bypass: Callable[[Any], bool] | None = None


KEY = FieldRule(Role.KEY)
IGNORE = FieldRule(Role.IGNORE)
OWN = FieldRule(Role.OWN)
Fields = Mapping[str, FieldRule]


def _is_true(value: Any) -> bool:
    return value is True


def _unpinned_prompt(value: Any) -> bool:
    """A prompt template without a `version` follows the latest version, which can change."""
    return not (isinstance(value, dict) and value.get("version") not in (None, ""))


# The provider keeps the completion (to list, evaluate or distill later): answered from the
# cache, it would never be kept. Off, it is accounting only.
STORE = FieldRule(Role.IGNORE, bypass=_is_true)

_COMMON_IGNORED = {
    "user": IGNORE,  # the end user (abuse monitoring, per-user limits): same answer
    "metadata": IGNORE,
    "safety_identifier": IGNORE,
    "prompt_cache_key": IGNORE,  # the provider's own prompt cache: same answer, cheaper
    "prompt_cache_retention": IGNORE,
    "prompt_cache_options": IGNORE,
}
_PROXY_OWN = {"model": OWN, "stream": OWN, "stream_options": OWN}

CHAT: Fields = {
    **_PROXY_OWN,
    **_COMMON_IGNORED,
    "store": STORE,
    **dict.fromkeys(
        (
            "messages",
            "audio",
            "frequency_penalty",
            "function_call",
            "functions",
            "logit_bias",
            "logprobs",
            "max_completion_tokens",
            "max_tokens",
            "modalities",
            "moderation",
            "n",
            "parallel_tool_calls",
            "prediction",
            "presence_penalty",
            "reasoning_effort",
            "response_format",
            "seed",
            # The answer reports the tier that served it: a cached answer must match it.
            "service_tier",
            "stop",
            "temperature",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "verbosity",
            "web_search_options",
        ),
        KEY,
    ),
}

COMPLETIONS: Fields = {
    **_PROXY_OWN,
    "user": IGNORE,
    **dict.fromkeys(
        (
            "prompt",
            "best_of",
            "echo",
            "frequency_penalty",
            "logit_bias",
            "logprobs",
            "max_tokens",
            "n",
            "presence_penalty",
            "seed",
            "stop",
            "suffix",
            "temperature",
            "top_p",
        ),
        KEY,
    ),
}

RESPONSES: Fields = {
    **_PROXY_OWN,
    # Delivery only (`include_obfuscation`); the proxy asks for nothing here itself.
    "stream_options": IGNORE,
    **_COMMON_IGNORED,
    "store": STORE,
    "background": FieldRule(Role.KEY, bypass=_is_true),  # a job to poll, not an answer
    "conversation": FieldRule(Role.KEY, bypass=lambda _: True),  # the conversation receives the turn
    "prompt": FieldRule(Role.KEY, bypass=_unpinned_prompt),
    **dict.fromkeys(
        (
            "input",
            "instructions",
            "access_programs",
            "background_options",
            "context_management",
            "image",
            "include",
            "max_output_tokens",
            "max_tool_calls",
            "moderation",
            "parallel_tool_calls",
            "previous_response_id",  # an immutable earlier response: part of the input
            "reasoning",
            "service_tier",
            "temperature",
            "text",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "truncation",
        ),
        KEY,
    ),
}

EMBEDDINGS: Fields = {
    "model": OWN,
    "encoding_format": OWN,
    "user": IGNORE,
    "input": KEY,
    "dimensions": KEY,
    # Not in OpenAI's API, named for readers: Cohere and NVIDIA NIM embed queries and
    # documents differently, and truncate or refuse long inputs.
    "input_type": KEY,
    "truncate": KEY,
}


def role_of(fields: Fields, name: str) -> Role:
    rule = fields.get(name)
    return Role.KEY if rule is None else rule.role


def own_fields(fields: Fields) -> frozenset[str]:
    return frozenset(name for name, rule in fields.items() if rule.role is Role.OWN)


def keyed(fields: Fields, body: Mapping[str, Any]) -> dict[str, Any]:
    """The body's fields that go into the key (KEY, and any field not in the table)."""
    return {
        name: value for name, value in body.items() if value is not None and role_of(fields, name) is Role.KEY
    }


def bypass_reason(fields: Fields, body: Mapping[str, Any]) -> str | None:
    """A field whose value needs server-side state, if any (the body's few fields are
    walked, not the table's many: this runs on every request, hits included)."""
    for name, value in body.items():
        rule = fields.get(name)
        if rule is not None and rule.bypass is not None and value is not None and rule.bypass(value):
            return name
    return None


@dataclass(frozen=True, slots=True)
class Defaults:
    """Parameter values equal to the API's default, folded into "not sent" for the key.

    `protocol`: defaults of the API itself, the same on every server that speaks it.
    `sampling`: OpenAI's sampling defaults; other servers have their own (vLLM reads the
    model's generation config, Ollama's temperature is 0.8), so these fold only for models
    whose `request_defaults` resolve to `openai`."""

    protocol: Mapping[str, Any]
    sampling: Mapping[str, Any]


_SAMPLING = {"temperature": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0}

CHAT_DEFAULTS = Defaults(
    protocol={
        "n": 1,
        "logprobs": False,
        "parallel_tool_calls": True,
        "response_format": {"type": "text"},
        "logit_bias": {},
        "stop": [],
    },
    sampling=_SAMPLING,
)
COMPLETIONS_DEFAULTS = Defaults(
    protocol={"n": 1, "best_of": 1, "echo": False, "logit_bias": {}, "stop": [], "suffix": ""},
    sampling={**_SAMPLING, "max_tokens": 16},
)
RESPONSES_DEFAULTS = Defaults(
    protocol={
        "parallel_tool_calls": True,
        "truncation": "disabled",
        "tool_choice": "auto",
        "text": {"format": {"type": "text"}},
    },
    sampling={"temperature": 1, "top_p": 1},
)
EMBEDDINGS_DEFAULTS = Defaults(protocol={}, sampling={})
