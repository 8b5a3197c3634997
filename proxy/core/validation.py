"""Parse and check a chat completion body before anything else touches it.

A light, hand-written check (not a pydantic model of the whole body): it runs on every
request, hits included. It rejects what OpenAI itself would reject with a 400, names the
offending `param`, and passes unknown fields through untouched (providers add their own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from proxy.errors import InvalidRequest, MalformedJSON

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_MESSAGES = 4096


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a dict, or a 400 that says what is wrong with it."""
    if not raw:
        raise MalformedJSON("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedJSON("The request body must be a JSON object.")
    return body


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number_in(lo: float, hi: float) -> Callable[[object], bool]:
    return lambda v: _is_number(v) and lo <= v <= hi  # type: ignore[operator]


def int_in(lo: int, hi: int) -> Callable[[object], bool]:
    return lambda v: _is_int(v) and lo <= v <= hi  # type: ignore[operator]


def stop_ok(v: object) -> bool:
    if isinstance(v, str):
        return True
    return isinstance(v, list) and len(v) <= 4 and all(isinstance(s, str) for s in v)


# param -> (check, what it must be). None is always allowed: it means "not set".
CHAT_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "temperature": (number_in(0, 2), "a number between 0 and 2"),
    "top_p": (number_in(0, 1), "a number between 0 and 1"),
    "n": (int_in(1, 128), "an integer between 1 and 128"),
    "max_tokens": (int_in(1, 10_000_000), "a positive integer"),
    "max_completion_tokens": (int_in(1, 10_000_000), "a positive integer"),
    "presence_penalty": (number_in(-2, 2), "a number between -2 and 2"),
    "frequency_penalty": (number_in(-2, 2), "a number between -2 and 2"),
    "seed": (_is_int, "an integer"),
    "logprobs": (lambda v: isinstance(v, bool), "a boolean"),
    "top_logprobs": (int_in(0, 20), "an integer between 0 and 20"),
    "stop": (stop_ok, "a string or a list of at most 4 strings"),
    "user": (lambda v: isinstance(v, str), "a string"),
    "stream_options": (lambda v: isinstance(v, dict), "an object"),
    "tools": (lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v), "a list of objects"),
    "tool_choice": (lambda v: isinstance(v, str | dict), "a string or an object"),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "a boolean"),
    "response_format": (lambda v: isinstance(v, dict), "an object"),
    "logit_bias": (lambda v: isinstance(v, dict), "an object"),
    "metadata": (lambda v: isinstance(v, dict), "an object"),
    "reasoning_effort": (lambda v: isinstance(v, str), "a string"),
}


Checks = dict[str, tuple[Callable[[object], bool], str]]


def check_chat_request(body: dict[str, Any]) -> None:
    """Raise InvalidRequest (with `param`) unless the body is a plausible chat request."""
    check_model(body)
    _check_messages(body.get("messages"))
    check_params(body, CHAT_CHECKS)


def check_model(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")


def check_params(body: dict[str, Any], checks: Checks) -> None:
    for name, (ok, what) in checks.items():
        value = body.get(name)
        if value is not None and not ok(value):
            raise InvalidRequest(f"Invalid value for '{name}': expected {what}.", param=name)


def _check_messages(messages: object) -> None:
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(
            f"'messages' has {len(messages)} items; at most {MAX_MESSAGES} are accepted.",
            param="messages",
        )
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object.", param=where)
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequest(
                f"Invalid value for '{where}.role': expected one of {', '.join(sorted(_ROLES))}.",
                param=f"{where}.role",
            )
        content = message.get("content")
        if content is None:
            if role != "assistant":
                raise InvalidRequest(
                    f"Missing required parameter: '{where}.content'.", param=f"{where}.content"
                )
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise InvalidRequest(
                        f"'{where}.content[{j}]' must be an object with a 'type'.",
                        param=f"{where}.content[{j}]",
                    )
        elif not isinstance(content, str):
            raise InvalidRequest(
                f"Invalid type for '{where}.content': expected a string or an array of parts.",
                param=f"{where}.content",
            )
