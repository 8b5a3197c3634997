"""Chat features that must key and replay correctly: n > 1, logprobs, response_format,
multimodal parts, reasoning and refusal."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from proxy.core.apis.chat import ChatAssembler
from tests.conftest import UPSTREAM_BASE, auth, openai_completion, provider_mock, sse_events

pytestmark = pytest.mark.anyio
# A direct model relays the provider's chunks untouched: what these tests check is
# the proxy's own keying, assembly and replay (litellm's translation is tested elsewhere).
DIRECT = [
    {
        "name": "direct",
        "litellm_model": "openai/gpt-4o-mini",
        "api_base": UPSTREAM_BASE,
        "api_key": "sk-upstream-secret",
        "route": "direct",
    },
    {
        "name": "gpt-4o-mini",
        "litellm_model": "openai/gpt-4o-mini",
        "api_base": UPSTREAM_BASE,
        "api_key": "sk-upstream-secret",
    },
]
CHAT = "/v1/chat/completions"
URL = f"{UPSTREAM_BASE}/chat/completions"
HEAD = {"id": "chatcmpl-f", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
LOGPROB = {
    "token": "Hi",
    "logprob": -0.25,
    "bytes": [72, 105],
    "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}],
}


def sse(chunks: list[dict[str, Any]]) -> httpx.Response:
    body = b"".join(b"data: " + orjson.dumps({**HEAD, **c}) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


def assembled(raw: bytes) -> dict[str, Any]:
    assembler = ChatAssembler()
    for event in sse_events(raw)[:-1]:
        assembler.add(event)
    return assembler.response()


async def test_two_choices_with_reasoning_refusal_and_logprobs_replay_exactly(make_client: Any) -> None:
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "reasoning_content": "thinking"},
                    "finish_reason": None,
                }
            ]
        },
        {
            "choices": [
                {"index": 1, "delta": {"role": "assistant", "refusal": "I can't"}, "finish_reason": None}
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "Hi"},
                    "logprobs": {"content": [LOGPROB]},
                    "finish_reason": None,
                }
            ]
        },
        {
            "choices": [
                {"index": 0, "delta": {}, "finish_reason": "stop"},
                {"index": 1, "delta": {}, "finish_reason": "stop"},
            ]
        },
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}},
    ]
    client = await make_client(models=DIRECT)
    body = {
        "model": "direct",
        "messages": [{"role": "user", "content": "two please"}],
        "n": 2,
        "logprobs": True,
        "top_logprobs": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with provider_mock() as mock:
        route = mock.post(URL).mock(return_value=sse(chunks))
        live = await client.post(CHAT, json=body, headers=auth())
        replay = await client.post(CHAT, json=body, headers=auth())
        plain = await client.post(CHAT, json={**body, "stream": False}, headers=auth())
    assert route.call_count == 1
    assert (live.headers["x-cache"], replay.headers["x-cache"], plain.headers["x-cache"]) == (
        "MISS",
        "HIT",
        "HIT",
    )
    assert assembled(live.content) == assembled(replay.content) == plain.json()
    choices = plain.json()["choices"]
    assert choices[0]["message"]["reasoning_content"] == "thinking"
    assert choices[0]["message"]["content"] == "Hi"
    assert choices[0]["logprobs"] == {"content": [LOGPROB]}
    assert choices[1]["message"]["refusal"] == "I can't"
    assert plain.json()["usage"]["total_tokens"] == 12


@pytest.mark.parametrize(
    "change",
    [
        {"response_format": {"type": "json_object"}},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            }
        },
        {"logprobs": True},
        {"top_logprobs": 2, "logprobs": True},
        {"n": 2},
        {"seed": 7},
        {"reasoning_effort": "high"},
        {"max_completion_tokens": 10},
        {"max_tokens": 10},
        {"stop": ["\n"]},
        {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    ],
                }
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgp="}},
                    ],
                }
            ]
        },
    ],
)
async def test_each_answer_changing_feature_gets_its_own_entry(
    make_client: Any, change: dict[str, Any]
) -> None:
    base = {
        "model": "direct",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
    }
    client = await make_client(models=DIRECT)
    # As many choices as asked for: an answer missing a choice is not cached.
    answer = httpx.Response(200, json=openai_completion("x", n=change.get("n", 1)))
    with provider_mock() as mock:
        route = mock.post(URL).mock(return_value=answer)
        first = await client.post(CHAT, json=base, headers=auth())
        changed = await client.post(CHAT, json={**base, **change}, headers=auth())
        again = await client.post(CHAT, json={**base, **change}, headers=auth())
    assert route.call_count == 2
    assert first.headers["x-cache-key"] != changed.headers["x-cache-key"]
    assert (changed.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")


async def test_a_stream_missing_a_choice_is_not_cached(make_client: Any) -> None:
    """Through litellm, whose stream wrapper drops choices after the first: n=2 is not stored."""
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "A"}, "finish_reason": None}]},
        {"choices": [{"index": 1, "delta": {"role": "assistant", "content": "B"}, "finish_reason": None}]},
        {
            "choices": [
                {"index": 0, "delta": {}, "finish_reason": "stop"},
                {"index": 1, "delta": {}, "finish_reason": "stop"},
            ]
        },
    ]
    client = await make_client(models=DIRECT)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "two"}], "n": 2, "stream": True}
    with provider_mock() as mock:
        route = mock.post(URL).mock(return_value=sse(chunks))
        await client.post(CHAT, json=body, headers=auth())
        second = await client.post(CHAT, json=body, headers=auth())
    assert second.headers["x-cache"] == "MISS"
    assert route.call_count == 2
