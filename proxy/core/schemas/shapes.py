"""The structured fields of the request tables: model, chat messages, a completions prompt,
a Responses API input, an embeddings input.

Each is a `Shape`: a hand-written check that names the exact place at fault
(`messages[2].role`, `input[1]`) next to the JSON Schema of the same rule.
tests/unit/core/test_schemas.py holds each pair to the same verdicts.
"""

from __future__ import annotations

from proxy.core.schemas.kinds import Shape, is_int
from proxy.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_MESSAGES = 4096
EmbeddingItem = str | list[int]


def _missing(name: str) -> str:
    return f"Missing required parameter: '{name}'."


def _model(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    return value


def _embedding_model(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    return value


_NAME = {"type": "string", "minLength": 1}
MODEL = Shape(_model, "the model name", _NAME, "You must provide a model parameter.")
EMBEDDING_MODEL = Shape(_embedding_model, "the model name", _NAME, "You must provide a model parameter.")


def _messages(messages: object) -> object:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(
            f"'messages' has {len(messages)} items; at most {MAX_MESSAGES} are accepted.", param="messages"
        )
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object.", param=where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(
                f"Invalid value for '{where}.role': expected one of {', '.join(sorted(ROLES))}.",
                param=f"{where}.role",
            )
        content = message.get("content")
        if content is None:
            if role != "assistant":
                raise InvalidRequest(_missing(f"{where}.content"), param=f"{where}.content")
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
    return messages


_PART = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": sorted(ROLES)},
        "content": {"type": ["string", "array", "null"], "items": _PART},
    },
    # Only the assistant may leave `content` out or null (when it calls tools).
    "anyOf": [
        {"properties": {"role": {"const": "assistant"}}},
        {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}},
    ],
}
MESSAGES = Shape(
    _messages,
    "the conversation: each message has a role and a content (a string or an array of typed parts)",
    {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES, "items": _MESSAGE},
    _missing("messages"),
)

_TOKENS = {"type": "array", "minItems": 1, "items": {"type": "integer"}}


def _is_tokens(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(map(is_int, value))


def _prompt(prompt: object) -> object:
    if isinstance(prompt, str):
        return prompt
    if (isinstance(prompt, list) and prompt) and (
        all(is_int(p) for p in prompt) or all(isinstance(p, str) or _is_tokens(p) for p in prompt)
    ):
        return prompt
    raise InvalidRequest(
        "'prompt' must be a string, an array of strings, an array of tokens or an array of token arrays.",
        param="prompt",
    )


PROMPT = Shape(
    _prompt,
    "a string, an array of strings, a token array, or an array of strings and token arrays",
    {
        "anyOf": [
            {"type": "string"},
            _TOKENS,
            {"type": "array", "minItems": 1, "items": {"anyOf": [{"type": "string"}, _TOKENS]}},
        ]
    },
    _missing("prompt"),
)


def _input(value: object) -> object:
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'input' must be a string or a non-empty array of input items.", param="input")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"'input[{i}]' must be an object.", param=f"input[{i}]")
    return value


INPUT = Shape(
    _input,
    "a string or a non-empty array of input items (objects)",
    {"type": ["string", "array"], "minItems": 1, "items": {"type": "object"}},
    _missing("input"),
)


def embedding_items(value: object) -> list[EmbeddingItem]:
    """The items an embeddings `input` holds: one per string or token array."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidRequest(EMBEDDING_INPUT.missing, param="input")
    if all(is_int(v) for v in value):
        return [value]  # one token array
    if all(isinstance(v, str) for v in value):
        for i, text in enumerate(value):
            if not text:
                raise InvalidRequest(f"Input {i} is an empty string.", param=f"input[{i}]")
        return list(value)
    if all(_is_tokens(v) for v in value):
        return list(value)
    raise InvalidRequest(
        "'input' must be a string, an array of strings, an array of tokens, or an array of token arrays "
        "(not a mix).",
        param="input",
    )


_TEXT = {"type": "string", "minLength": 1}
EMBEDDING_INPUT = Shape(
    embedding_items,
    "a non-empty string, an array of non-empty strings, a token array, or an array of token arrays",
    {
        "anyOf": [
            _TEXT,
            {"type": "array", "minItems": 1, "items": _TEXT},
            _TOKENS,
            {"type": "array", "minItems": 1, "items": _TOKENS},
        ]
    },
    "'input' must be a non-empty string or array.",
)
