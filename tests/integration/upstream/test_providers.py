"""A non-OpenAI provider looks like OpenAI to clients, and tool calls replay faithfully.

Anthropic's own HTTP API (/v1/messages, with its streaming events) is mocked with respx,
so litellm's translation really runs; tool-call streams are checked through the openai
SDK's own accumulation, live against replayed.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import TENANT_KEYS, UPSTREAM_BASE, auth, provider_mock, sse_events

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
ANTHROPIC = "http://anthropic.test"
MODELS = [
    {
        "name": "claude",
        "litellm_model": "anthropic/claude-3-5-haiku-latest",
        "api_base": ANTHROPIC,
        "api_key": "sk-ant-server-secret",
    },
    {
        "name": "gpt-4o-mini",
        "litellm_model": "openai/gpt-4o-mini",
        "api_base": UPSTREAM_BASE,
        "api_key": "sk-upstream-secret",
    },
]
MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-20241022",
    "content": [{"type": "text", "text": "Hi from Claude"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 5},
}


def anthropic_sse(pieces: list[str]) -> bytes:
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    **MESSAGE,
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 10, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
    ]
    events += [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
        )
        for p in pieces
    ]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(pieces)},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n" for name, data in events)


def ask(model: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 50, **extra}


async def test_anthropic_answers_in_the_openai_shape_and_is_cached(make_client: Any) -> None:
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(f"{ANTHROPIC}/v1/messages").mock(return_value=httpx.Response(200, json=MESSAGE))
        first = await client.post(CHAT, json=ask("claude", "hi"), headers=auth())
        second = await client.post(CHAT, json=ask("claude", "hi"), headers=auth())
    assert route.call_count == 1
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    body = second.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hi from Claude"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (10, 5)
    sent = route.calls.last.request
    assert sent.headers["x-api-key"] == "sk-ant-server-secret"
    assert orjson.loads(sent.content)["model"] == "claude-3-5-haiku-latest"
    assert b"sk-ant-server-secret" not in first.content


async def test_anthropic_stream_is_translated_relayed_and_replayed(make_client: Any) -> None:
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(f"{ANTHROPIC}/v1/messages").mock(
            return_value=httpx.Response(
                200, content=anthropic_sse(["Hello", " there"]), headers={"content-type": "text/event-stream"}
            )
        )
        texts = []
        for expected in ("MISS", "HIT"):
            response = await client.post(
                CHAT,
                json=ask("claude", "stream", stream=True, stream_options={"include_usage": True}),
                headers=auth(),
            )
            assert response.headers["x-cache"] == expected
            events = sse_events(response.content)
            assert events[-1] == "[DONE]"
            chunks = events[:-1]
            assert all(c["object"] == "chat.completion.chunk" for c in chunks)
            texts.append(
                "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            )
            assert any(c.get("usage") for c in chunks)
    assert texts == ["Hello there", "Hello there"]
    assert route.call_count == 1


async def test_anthropic_models_are_rate_limited_like_any_other(make_client: Any) -> None:
    tenants = [
        {
            "name": "acme",
            "api_keys": [TENANT_KEYS["acme"]],
            "limits": {"models": {"claude": {"requests_per_minute": 1}}},
        }
    ]
    client = await make_client(models=MODELS, tenants=tenants)
    with provider_mock() as mock:
        mock.post(f"{ANTHROPIC}/v1/messages").mock(return_value=httpx.Response(200, json=MESSAGE))
        assert (await client.post(CHAT, json=ask("claude", "one"), headers=auth())).status_code == 200
        limited = await client.post(CHAT, json=ask("claude", "two"), headers=auth())
    assert limited.status_code == 429 and "acme (model claude)" in limited.json()["error"]["message"]


def tool_call_sse() -> bytes:
    head = {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [
        chunk({"role": "assistant", "content": None}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_w",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris", "unit": "c"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_t",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
                    }
                ]
            }
        ),
        chunk({}, "tool_calls"),
        {**head, "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}},
    ]
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


async def test_sdk_accumulated_tool_calls_equal_live_and_replayed(make_client: Any) -> None:
    client = await make_client(models=MODELS)
    sdk = openai.AsyncOpenAI(
        base_url="http://proxy/v1", api_key=TENANT_KEYS["acme"], http_client=client, max_retries=0
    )
    tools = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
        for n in ("get_weather", "get_time")
    ]
    finals = []
    with provider_mock() as mock:
        route = mock.post(f"{UPSTREAM_BASE}/chat/completions").mock(
            return_value=httpx.Response(
                200, content=tool_call_sse(), headers={"content-type": "text/event-stream"}
            )
        )
        for _ in range(2):  # live (miss), then replayed (hit)
            async with sdk.chat.completions.stream(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "weather and time?"}],
                tools=tools,
            ) as stream:
                finals.append(await stream.get_final_completion())
    assert route.call_count == 1
    live, replayed = (f.choices[0] for f in finals)
    assert live.finish_reason == replayed.finish_reason == "tool_calls"
    assert [c.model_dump() for c in live.message.tool_calls or []] == [
        c.model_dump() for c in replayed.message.tool_calls or []
    ]
    calls = live.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_w", "get_weather", '{"city": "Paris", "unit": "c"}'),
        ("call_t", "get_time", '{"tz": "CET"}'),
    ]
