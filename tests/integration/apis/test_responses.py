"""The Responses API (`POST /v1/responses`) through the app: OpenAI's /responses and
Anthropic's /v1/messages are mocked with respx (so litellm's translation really runs),
Redis is real; streams are checked through the openai SDK's own event accumulation."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import UPSTREAM_BASE, auth, provider_mock, sdk
from tests.integration.upstream.test_providers import ANTHROPIC, MESSAGE, MODELS, anthropic_sse

pytestmark = pytest.mark.anyio
PATH = "/v1/responses"
URL = f"{UPSTREAM_BASE}/responses"
CALL = {
    "type": "function_call",
    "id": "fc_1",
    "call_id": "call_1",
    "name": "get_weather",
    "arguments": '{"city": "Paris"}',
    "status": "completed",
}
MESSAGE_ITEM = {
    "type": "message",
    "id": "msg_1",
    "status": "completed",
    "role": "assistant",
    "content": [{"type": "output_text", "text": "It is sunny in Paris.", "annotations": []}],
}


def openai_response(output: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": "gpt-4o-mini",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {"input_tokens": 12, "output_tokens": 9, "total_tokens": 21},
    }


def responses_sse(final: str = "response.completed") -> bytes:
    """A live stream as OpenAI sends it: a tool call, then a message in three deltas."""
    whole = openai_response([CALL, MESSAGE_ITEM])
    opening = {**whole, "status": "in_progress", "output": [], "usage": None}
    text_at = {"item_id": "msg_1", "output_index": 1, "content_index": 0}
    call_at = {"item_id": "fc_1", "output_index": 0}
    empty_text = {"type": "output_text", "text": "", "annotations": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": opening},
        {"type": "response.in_progress", "response": opening},
        {"type": "response.output_item.added", "output_index": 0, "item": {**CALL, "arguments": ""}},
        {"type": "response.function_call_arguments.delta", **call_at, "delta": '{"city"'},
        {"type": "response.function_call_arguments.delta", **call_at, "delta": ': "Paris"}'},
        {"type": "response.function_call_arguments.done", **call_at, "arguments": CALL["arguments"]},
        {"type": "response.output_item.done", "output_index": 0, "item": CALL},
        {"type": "response.output_item.added", "output_index": 1, "item": {**MESSAGE_ITEM, "content": []}},
        {"type": "response.content_part.added", **text_at, "part": empty_text},
        *(
            {"type": "response.output_text.delta", **text_at, "delta": d}
            for d in ("It is ", "sunny ", "in Paris.")
        ),
        {"type": "response.output_text.done", **text_at, "text": "It is sunny in Paris."},
        {"type": "response.content_part.done", **text_at, "part": MESSAGE_ITEM["content"][0]},
        {"type": "response.output_item.done", "output_index": 1, "item": MESSAGE_ITEM},
    ]
    if final == "response.completed":
        events.append({"type": final, "response": whole})
    elif final:
        events.append({"type": final, "response": {**whole, "status": final.split(".")[1]}})
    return b"".join(
        f"event: {e['type']}\ndata: ".encode() + orjson.dumps({**e, "sequence_number": i}) + b"\n\n"
        for i, e in enumerate(events)
    )


async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post(PATH, json={"model": "gpt-4o-mini", **body}, headers=auth())


def streaming(content: bytes) -> httpx.Response:
    return httpx.Response(200, content=content, headers={"content-type": "text/event-stream"})


async def test_miss_then_hit_through_the_sdk(make_client: Any, upstream: Any) -> None:
    client = await make_client()
    route = upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_response([MESSAGE_ITEM])))
    seen = []
    for expected in ("MISS", "HIT"):
        raw = await sdk(client).responses.with_raw_response.create(
            model="gpt-4o-mini", input="Weather in Paris?"
        )
        assert raw.headers["x-cache"] == expected
        seen.append(raw.parse())
    assert route.call_count == 1
    assert seen[0].output_text == seen[1].output_text == "It is sunny in Paris."
    assert seen[1].usage is not None and seen[1].usage.total_tokens == 21
    assert orjson.loads(route.calls.last.request.content)["input"] == "Weather in Paris?"


async def test_stream_events_replay_in_order_and_accumulate_the_same(make_client: Any, upstream: Any) -> None:
    client = await make_client()
    route = upstream.post(URL).mock(return_value=streaming(responses_sse()))
    finals, kinds = [], []
    for _ in range(2):  # live (miss), then replayed (hit)
        async with sdk(client).responses.stream(model="gpt-4o-mini", input="Weather?", tools=[]) as stream:
            kinds.append([event.type async for event in stream])
            finals.append(await stream.get_final_response())
    assert route.call_count == 1
    live, replayed = finals
    assert replayed.model_dump() == live.model_dump()
    assert replayed.output_text == "It is sunny in Paris."
    assert [(i.type, getattr(i, "arguments", None)) for i in replayed.output] == [
        ("function_call", '{"city": "Paris"}'),
        ("message", None),
    ]
    expected = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert kinds[1] == expected
    assert [k for i, k in enumerate(kinds[0]) if i == 0 or kinds[0][i - 1] != k] == expected
    # A non-stream request is served from the stored stream too.
    whole = await client.post(
        PATH, json={"model": "gpt-4o-mini", "input": "Weather?", "tools": []}, headers=auth()
    )
    assert whole.headers["x-cache"] == "HIT" and whole.json()["output"][1] == MESSAGE_ITEM
    raw = await client.post(
        PATH, json={"model": "gpt-4o-mini", "input": "Weather?", "stream": True}, headers=auth()
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert b"data: [DONE]" not in raw.content and raw.content.startswith(b"event: response.created\ndata: ")


@pytest.mark.parametrize("final", ["response.incomplete", "response.failed", ""])
async def test_unfinished_streams_are_not_cached(make_client: Any, upstream: Any, final: str) -> None:
    client = await make_client()
    route = upstream.post(URL).mock(return_value=streaming(responses_sse(final)))
    for _ in range(2):
        r = await client.post(
            PATH, json={"model": "gpt-4o-mini", "input": "x", "stream": True}, headers=auth()
        )
        assert r.status_code == 200 and r.headers["x-cache"] == "MISS"
    assert route.call_count == 2


async def test_store_and_background_requests_pass_through_uncached(make_client: Any, upstream: Any) -> None:
    client = await make_client()
    route = upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_response([MESSAGE_ITEM])))
    for extra in ({"store": True}, {"background": True}):
        for _ in range(2):
            r = await post(client, {"input": "x", **extra})
            assert r.headers["x-cache"] == "BYPASS"
        assert orjson.loads(route.calls.last.request.content).items() >= extra.items()  # forwarded as sent
    assert route.call_count == 4
    # store: false (or left out) is cached.
    for expected in ("MISS", "HIT"):
        r = await client.post(
            PATH, json={"model": "gpt-4o-mini", "input": "x", "store": False}, headers=auth()
        )
        assert r.headers["x-cache"] == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"input": "x"}, {"input": "x", "previous_response_id": "resp_a"}),
        ({"input": "x", "previous_response_id": "resp_a"}, {"input": "x", "previous_response_id": "resp_b"}),
        ({"input": "x"}, {"input": "x", "instructions": "Be brief."}),
        ({"input": "x"}, {"input": [{"role": "user", "content": "x"}]}),
        ({"input": "x"}, {"input": "x", "temperature": 0.2}),
        ({"input": "x"}, {"input": "x", "text": {"format": {"type": "json_object"}}}),
        ({"input": "x"}, {"input": "x", "max_output_tokens": 100}),
    ],
)
async def test_fields_that_change_the_output_are_in_the_key(
    make_client: Any, upstream: Any, a: dict[str, Any], b: dict[str, Any]
) -> None:
    client = await make_client()
    upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_response([MESSAGE_ITEM])))
    first = await post(client, {**a})
    second = await post(client, {**b})
    assert first.status_code == second.status_code == 200, second.text
    assert first.headers["x-cache-key"] != second.headers["x-cache-key"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-4o-mini"}, "input"),
        ({"model": "gpt-4o-mini", "input": 5}, "input"),
        ({"model": "gpt-4o-mini", "input": []}, "input"),
        ({"model": "gpt-4o-mini", "input": ["x"]}, "input[0]"),
        ({"model": "gpt-4o-mini", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "gpt-4o-mini", "input": "x", "store": "yes"}, "store"),
        ({"model": "gpt-4o-mini", "input": "x", "truncation": "sometimes"}, "truncation"),
        ({"input": "x"}, "model"),
    ],
)
async def test_bad_input_is_a_clear_400(make_client: Any, body: dict[str, Any], param: str) -> None:
    client = await make_client()
    r = await client.post(PATH, json=body, headers=auth())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


async def test_anthropic_behind_the_responses_api(make_client: Any) -> None:
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(f"{ANTHROPIC}/v1/messages").mock(return_value=httpx.Response(200, json=MESSAGE))
        answers = [await sdk(client).responses.create(model="claude", input="hi") for _ in range(2)]
        assert answers[0].output_text == answers[1].output_text == "Hi from Claude"
        assert answers[1].usage is not None and answers[1].usage.input_tokens == 10
        assert route.call_count == 1
        route.mock(return_value=streaming(anthropic_sse(["Hel", "lo"])))
        finals = []
        for _ in range(2):
            async with sdk(client).responses.stream(model="claude", input="stream") as stream:
                finals.append(await stream.get_final_response())
        assert [f.output_text for f in finals] == ["Hello", "Hello"] and route.call_count == 2
    assert route.calls.last.request.headers["x-api-key"] == "sk-ant-server-secret"
