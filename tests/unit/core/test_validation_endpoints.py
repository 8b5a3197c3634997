"""Each endpoint's check: the exact 400 (message and `param`) clients and the integration
tests rely on, the order fields are checked in, and the names kept for the adapters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from proxy.core.validation import check_chat, check_completions, check_embeddings, check_responses
from proxy.errors import InvalidRequest

CHECKS: dict[str, Callable[[dict[str, Any]], object]] = {
    "chat": check_chat,
    "completions": check_completions,
    "responses": check_responses,
    "embeddings": check_embeddings,
}
MSG = [{"role": "user", "content": "x"}]

REFUSED = [
    ("chat", {"messages": MSG}, "model", "You must provide a model parameter."),
    ("chat", {"model": "", "messages": MSG}, "model", "'model' must be a non-empty string."),
    ("chat", {"model": "m"}, "messages", "Missing required parameter: 'messages'."),
    ("chat", {"model": "m", "messages": []}, "messages", "'messages' must be a non-empty array."),
    (
        "chat",
        {"model": "m", "messages": MSG * 4097},
        "messages",
        "'messages' has 4097 items; at most 4096 are accepted.",
    ),
    ("chat", {"model": "m", "messages": [1]}, "messages[0]", "'messages[0]' must be an object."),
    (
        "chat",
        {"model": "m", "messages": [{"role": "robot"}]},
        "messages[0].role",
        "Invalid value for 'messages[0].role': expected one of "
        "assistant, developer, function, system, tool, user.",
    ),
    (
        "chat",
        {"model": "m", "messages": [{"role": "tool"}]},
        "messages[0].content",
        "Missing required parameter: 'messages[0].content'.",
    ),
    (
        "chat",
        {"model": "m", "messages": [{"role": "user", "content": [{}]}]},
        "messages[0].content[0]",
        "'messages[0].content[0]' must be an object with a 'type'.",
    ),
    (
        "chat",
        {"model": "m", "messages": [{"role": "user", "content": 1}]},
        "messages[0].content",
        "Invalid type for 'messages[0].content': expected a string or an array of parts.",
    ),
    (
        "chat",
        {"model": "m", "messages": MSG, "temperature": 3},
        "temperature",
        "Invalid value for 'temperature': expected a number between 0 and 2.",
    ),
    (
        "chat",
        {"model": "m", "messages": MSG, "max_tokens": 0},
        "max_tokens",
        "Invalid value for 'max_tokens': expected a positive integer.",
    ),
    ("completions", {"model": "m"}, "prompt", "Missing required parameter: 'prompt'."),
    (
        "completions",
        {"model": "m", "prompt": ["a", 1]},
        "prompt",
        "'prompt' must be a string, an array of strings, an array of tokens or an array of token arrays.",
    ),
    (
        "completions",
        {"model": "m", "prompt": "x", "logprobs": 6},
        "logprobs",
        "Invalid value for 'logprobs': expected an integer between 0 and 5.",
    ),
    (
        "completions",
        {"model": "m", "prompt": "x", "echo": "yes"},
        "echo",
        "Invalid value for 'echo': expected a boolean.",
    ),
    (
        "completions",
        {"model": "m", "prompt": "x", "n": 3, "best_of": 2},
        "best_of",
        "'best_of' must be at least 'n'.",
    ),
    (
        "completions",
        {"model": "m", "prompt": "x", "best_of": 2, "stream": True},
        "best_of",
        "'best_of' cannot be used with 'stream'.",
    ),
    ("completions", {"prompt": "x"}, "model", "You must provide a model parameter."),
    ("responses", {"model": "m"}, "input", "Missing required parameter: 'input'."),
    (
        "responses",
        {"model": "m", "input": []},
        "input",
        "'input' must be a string or a non-empty array of input items.",
    ),
    ("responses", {"model": "m", "input": ["x"]}, "input[0]", "'input[0]' must be an object."),
    (
        "responses",
        {"model": "m", "input": "x", "max_output_tokens": 0},
        "max_output_tokens",
        "Invalid value for 'max_output_tokens': expected a positive integer.",
    ),
    (
        "responses",
        {"model": "m", "input": "x", "truncation": "sometimes"},
        "truncation",
        "Invalid value for 'truncation': expected 'auto' or 'disabled'.",
    ),
    (
        "responses",
        {"model": "m", "previous_response_id": ""},
        "previous_response_id",
        "Invalid value for 'previous_response_id': expected a response id.",
    ),
    ("embeddings", {"input": "a"}, "model", "You must provide a model parameter."),
    ("embeddings", {"model": 5, "input": "a"}, "model", "You must provide a model parameter."),
    ("embeddings", {"model": "e"}, "input", "'input' must be a non-empty string or array."),
    ("embeddings", {"model": "e", "input": []}, "input", "'input' must be a non-empty string or array."),
    ("embeddings", {"model": "e", "input": ["a", ""]}, "input[1]", "Input 1 is an empty string."),
    (
        "embeddings",
        {"model": "e", "input": [[1], "a"]},
        "input",
        "'input' must be a string, an array of strings, an array of tokens, or an array of token arrays "
        "(not a mix).",
    ),
    (
        "embeddings",
        {"model": "e", "input": "a", "encoding_format": "hex"},
        "encoding_format",
        "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
    ),
    (
        "embeddings",
        {"model": "e", "input": "a", "dimensions": 0},
        "dimensions",
        "Invalid value for 'dimensions': expected a positive integer.",
    ),
]


@pytest.mark.parametrize(("api", "body", "param", "message"), REFUSED)
def test_refusals_name_their_param_in_the_same_words(
    api: str, body: dict[str, Any], param: str, message: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        CHECKS[api](body)
    assert (info.value.param, info.value.message, info.value.status) == (param, message, 400)


ORDER = [  # several faults: the first in the table's order is the one reported
    ("chat", {"model": 1, "messages": 1, "temperature": 9}, "model"),
    ("chat", {"model": "m", "messages": 1, "temperature": 9}, "messages"),
    ("chat", {"model": "m", "messages": MSG, "temperature": 9, "n": 0}, "temperature"),
    ("completions", {"model": "m", "prompt": 1, "logprobs": 9}, "prompt"),
    ("completions", {"model": "m", "prompt": "x", "n": 3, "best_of": 2, "echo": 1}, "echo"),
    ("responses", {"model": "m", "stream": 1}, "input"),
    ("responses", {"model": "m", "input": 1, "stream": 1}, "input"),
    ("embeddings", {"model": "", "input": 1}, "model"),
    ("embeddings", {"model": "e", "input": 1, "dimensions": 0}, "input"),
    (
        "embeddings",
        {"model": "e", "input": "a", "dimensions": 0, "encoding_format": "hex"},
        "encoding_format",
    ),
]


@pytest.mark.parametrize(("api", "body", "param"), ORDER)
def test_the_first_fault_in_table_order_is_reported(api: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        CHECKS[api](body)
    assert info.value.param == param


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("a", ["a"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2], [[1, 2]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
    ],
)
def test_embeddings_returns_the_items(value: Any, items: list[Any]) -> None:
    assert check_embeddings({"model": "e", "input": value}) == items


def test_accepted_bodies() -> None:
    check_completions({"model": "m", "prompt": ["a", [1, 2]], "n": 2, "best_of": 2, "stream": False})
    check_completions({"model": "m", "prompt": [1, 2], "best_of": 1, "stream": True})
    check_responses({"model": "m", "previous_response_id": "resp_1"})
    check_responses({"model": "m", "prompt": {"id": "pmpt_1"}, "input": None})
    check_embeddings({"model": "e", "input": "a", "encoding_format": "", "user": 5})
    check_chat({"model": "m", "messages": [{"role": "function", "name": "f", "content": "{}"}]})
