"""The request tables of the four cached endpoints: shapes, parameters and rules, in check order.

What each endpoint accepts is written here once: `proxy.core.validation` checks bodies
against these tables on every request (hits included), `proxy.http.openapi` describes them
in `/openapi.json` (which the fuzz tests generate requests from). The checks are plain
Python (no schema validator at request time). Like OpenAI, the proxy rejects with a 400 what
the API would reject, names the `param` at fault, and passes fields it does not name on.
"""

from __future__ import annotations

from typing import Any

from proxy.core.schemas.kinds import (
    Param,
    RequestTable,
    Rule,
    anything,
    boolean,
    choice,
    either,
    integer,
    list_of,
    number,
    obj,
    string,
)
from proxy.core.schemas.shapes import EMBEDDING_INPUT, EMBEDDING_MODEL, INPUT, MESSAGES, MODEL, PROMPT


def _stop_ok(v: object) -> bool:
    if isinstance(v, str):
        return True
    return isinstance(v, list) and len(v) <= 4 and all(isinstance(s, str) for s in v)


_POSITIVE = integer(1, 10_000_000, what="a positive integer")
CHAT_PARAMS: dict[str, Param] = {
    "stream": boolean(),
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "n": integer(1, 128),
    "max_tokens": _POSITIVE,
    "max_completion_tokens": _POSITIVE,
    "presence_penalty": number(-2, 2),
    "frequency_penalty": number(-2, 2),
    "seed": integer(),
    "logprobs": boolean(),
    "top_logprobs": integer(0, 20),
    "stop": Param(
        _stop_ok,
        "a string or a list of at most 4 strings",
        {"type": ["string", "array"], "maxItems": 4, "items": {"type": "string"}},
    ),
    "user": string(),
    "stream_options": obj(),
    "tools": list_of("object"),
    "tool_choice": either("string", "object"),
    "parallel_tool_calls": boolean(),
    "response_format": obj(),
    "logit_bias": obj(),
    "metadata": obj(),
    "reasoning_effort": string(),
}


def _pick(*names: str) -> dict[str, Param]:
    return {name: CHAT_PARAMS[name] for name in names}


def _best_of_covers_n(body: dict[str, Any]) -> bool:
    best_of = body.get("best_of")
    return best_of is None or best_of >= (body.get("n") or 1)


def _best_of_not_streamed(body: dict[str, Any]) -> bool:
    return body.get("best_of") in (None, 1) or body.get("stream") is not True


CHAT = RequestTable("chat", {"model": MODEL, "messages": MESSAGES}, CHAT_PARAMS, ("model", "messages"))
COMPLETIONS = RequestTable(
    "completions",
    {"model": MODEL, "prompt": PROMPT},
    {
        **_pick("stream", "temperature", "top_p", "n", "max_tokens", "stop", "seed", "presence_penalty"),
        **_pick("frequency_penalty", "user", "stream_options", "logit_bias"),
        "logprobs": integer(0, 5),
        "best_of": integer(1, 20),
        "echo": boolean(),
        "suffix": string(),
    },
    ("model", "prompt"),
    rules=(
        Rule(_best_of_covers_n, "'best_of' must be at least 'n'.", "best_of"),  # not said in JSON Schema
        Rule(
            _best_of_not_streamed,
            "'best_of' cannot be used with 'stream'.",
            "best_of",
            {
                "not": {
                    "required": ["best_of", "stream"],
                    "properties": {
                        "stream": {"const": True},
                        "best_of": {"type": "integer", "not": {"const": 1}},
                    },
                }
            },
        ),
    ),
)
RESPONSES = RequestTable(
    "responses",
    {"model": MODEL, "input": INPUT},
    {
        **_pick("stream", "temperature", "top_p", "user", "metadata", "tools", "tool_choice"),
        **_pick("parallel_tool_calls"),
        "instructions": string(),
        "max_output_tokens": _POSITIVE,
        "previous_response_id": string(1, what="a response id"),
        "store": boolean(),
        "background": boolean(),
        "text": obj(),
        "reasoning": obj(),
        "truncation": choice("auto", "disabled"),
        "include": list_of("string"),
        "prompt": anything("a reusable prompt reference (passed on as sent)"),
    },
    ("model",),
    one_of=("input", "previous_response_id", "prompt"),
)
EMBEDDINGS = RequestTable(
    "embeddings",
    {"model": EMBEDDING_MODEL, "input": EMBEDDING_INPUT},
    {
        # Any falsy value means the default, 'float' (as it always has).
        "encoding_format": Param(
            lambda v: not v or v in ("float", "base64"),
            "'float' or 'base64'",
            {"anyOf": [{"type": "string", "enum": ["float", "base64"]}, {"enum": [False, 0, "", [], {}]}]},
        ),
        "dimensions": integer(1, what="a positive integer"),
        "user": anything("an end-user id (a value that is not a string is ignored)"),
    },
    ("model", "input"),
)
TABLES = (CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS)
