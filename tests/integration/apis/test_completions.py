"""Legacy completions (`POST /v1/completions`) through the app: the provider's HTTP API is
mocked with respx (OpenAI's /completions, Anthropic's /v1/messages), Redis is real."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import UPSTREAM_BASE, auth, provider_mock, sdk, sse_events
from tests.integration.upstream.test_providers import ANTHROPIC, MESSAGE, MODELS, anthropic_sse

pytestmark = pytest.mark.anyio
PATH = "/v1/completions"
URL = f"{UPSTREAM_BASE}/completions"
INSTRUCT = "instruct"
# litellm sends a completion for a chat model (gpt-4o-mini) to /chat/completions; an
# instruct model goes to the legacy /completions endpoint.
INSTRUCT_MODEL = {
    "name": INSTRUCT,
    "litellm_model": "openai/gpt-3.5-turbo-instruct",
    "api_base": UPSTREAM_BASE,
    "api_key": "sk-upstream-secret",
    # OpenAI's API behind a test URL: its sampling defaults (max_tokens 16, temperature 1).
    "request_defaults": "openai",
}


def text_completion(texts: list[str], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [
            {"text": t, "index": i, "logprobs": None, "finish_reason": finish} for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10},
    }


def completion_sse(pieces: list[str], finish: bool = True) -> bytes:
    head = {"id": "cmpl-s", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct"}
    chunks = [
        {**head, "choices": [{"text": p, "index": 0, "logprobs": None, "finish_reason": None}]}
        for p in pieces
    ]
    if finish:
        chunks.append(
            {**head, "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]}
        )
        chunks.append(
            {**head, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
        )
    tail = b"data: [DONE]\n\n" if finish else b""
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + tail


async def test_miss_then_hit_through_the_sdk(make_client: Any, upstream: Any) -> None:
    client = await make_client(models=[INSTRUCT_MODEL])
    route = upstream.post(URL).mock(return_value=httpx.Response(200, json=text_completion([" Paris."])))
    seen = []
    for expected in ("MISS", "HIT"):
        raw = await sdk(client).completions.with_raw_response.create(
            model=INSTRUCT, prompt="The capital of France is", max_tokens=5
        )
        assert raw.headers["x-cache"] == expected
        seen.append(raw.parse())
    assert route.call_count == 1
    assert seen[0].choices[0].text == seen[1].choices[0].text == " Paris."
    assert seen[1].usage is not None and seen[1].usage.total_tokens == 10
    sent = orjson.loads(route.calls.last.request.content)
    assert sent["prompt"] == "The capital of France is" and sent["max_tokens"] == 5


async def test_stream_miss_then_hit_replays_the_same_text(make_client: Any, upstream: Any) -> None:
    client = await make_client(models=[INSTRUCT_MODEL])
    route = upstream.post(URL).mock(
        return_value=httpx.Response(
            200, content=completion_sse([" Par", "is", "."]), headers={"content-type": "text/event-stream"}
        )
    )
    texts, usages = [], []
    for _ in range(2):
        stream = await sdk(client).completions.create(
            model=INSTRUCT, prompt="Capital?", stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
        texts.append("".join(c.choices[0].text for c in chunks if c.choices))
        usages.append([c.usage.total_tokens for c in chunks if c.usage])
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert route.call_count == 1
    assert texts == [" Paris.", " Paris."] and usages == [[5], [5]]
    # Without include_usage, no usage chunk is shown.
    plain = await client.post(
        PATH, json={"model": INSTRUCT, "prompt": "Capital?", "stream": True}, headers=auth()
    )
    events = sse_events(plain.content)
    assert plain.headers["x-cache"] == "HIT" and events[-1] == "[DONE]"
    assert not any(e.get("usage") for e in events[:-1])


async def test_a_cut_off_stream_is_not_cached(make_client: Any, upstream: Any) -> None:
    client = await make_client(models=[INSTRUCT_MODEL])
    route = upstream.post(URL).mock(
        return_value=httpx.Response(
            200, content=completion_sse(["half"], finish=False), headers={"content-type": "text/event-stream"}
        )
    )
    for _ in range(2):
        r = await client.post(PATH, json={"model": INSTRUCT, "prompt": "x", "stream": True}, headers=auth())
        assert r.headers["x-cache"] == "MISS"
    assert route.call_count == 2


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"prompt": "x"}, {"prompt": ["x"]}),
        ({"prompt": "x"}, {"prompt": "x", "echo": True}),
        ({"prompt": "x"}, {"prompt": "x", "suffix": "!"}),
        ({"prompt": "x"}, {"prompt": "x", "logprobs": 2}),
        ({"prompt": "x"}, {"prompt": "x", "max_tokens": 17}),
        ({"prompt": "x"}, {"prompt": "x", "best_of": 2}),
        ({"prompt": [1, 2]}, {"prompt": [1, 3]}),
    ],
)
async def test_fields_that_change_the_text_are_in_the_key(
    make_client: Any, upstream: Any, a: dict[str, Any], b: dict[str, Any]
) -> None:
    client = await make_client(models=[INSTRUCT_MODEL])
    upstream.post(URL).mock(return_value=httpx.Response(200, json=text_completion(["y"])))
    first = await client.post(PATH, json={"model": INSTRUCT, **a}, headers=auth())
    second = await client.post(PATH, json={"model": INSTRUCT, **b}, headers=auth())
    assert first.headers["x-cache-key"] != second.headers["x-cache-key"]


async def test_defaults_and_delivery_fields_share_a_key(make_client: Any, upstream: Any) -> None:
    client = await make_client(models=[INSTRUCT_MODEL])
    route = upstream.post(URL).mock(return_value=httpx.Response(200, json=text_completion(["y"])))
    variants = [
        {"prompt": "x"},
        {"prompt": "x", "max_tokens": 16, "temperature": 1, "echo": False, "n": 1, "user": "u1"},
        {"prompt": "x", "stream": False, "best_of": 1, "suffix": None},
    ]
    keys = set()
    for body in variants:
        r = await client.post(PATH, json={"model": INSTRUCT, **body}, headers=auth())
        keys.add(r.headers["x-cache-key"])
    assert len(keys) == 1 and route.call_count == 1


async def test_every_prompt_times_n_must_be_answered_to_be_cached(make_client: Any, upstream: Any) -> None:
    client = await make_client(models=[INSTRUCT_MODEL])
    route = upstream.post(URL).mock(return_value=httpx.Response(200, json=text_completion(["a", "b", "c"])))
    body = {"model": INSTRUCT, "prompt": ["p1", "p2"], "n": 2}
    for _ in range(2):  # 3 of the 4 choices: served, not stored
        assert (await client.post(PATH, json=body, headers=auth())).headers["x-cache"] == "MISS"
    route.mock(return_value=httpx.Response(200, json=text_completion(["a", "b", "c", "d"])))
    await client.post(PATH, json=body, headers=auth())
    assert (await client.post(PATH, json=body, headers=auth())).headers["x-cache"] == "HIT"
    assert route.call_count == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": INSTRUCT}, "prompt"),
        ({"model": INSTRUCT, "prompt": 5}, "prompt"),
        ({"model": INSTRUCT, "prompt": []}, "prompt"),
        ({"model": INSTRUCT, "prompt": ["a", 1]}, "prompt"),
        ({"model": INSTRUCT, "prompt": "x", "logprobs": 6}, "logprobs"),
        ({"model": INSTRUCT, "prompt": "x", "echo": "yes"}, "echo"),
        ({"model": INSTRUCT, "prompt": "x", "n": 3, "best_of": 2}, "best_of"),
        ({"model": INSTRUCT, "prompt": "x", "best_of": 2, "stream": True}, "best_of"),
        ({"prompt": "x"}, "model"),
    ],
)
async def test_bad_input_is_a_clear_400(make_client: Any, body: dict[str, Any], param: str) -> None:
    client = await make_client(models=[INSTRUCT_MODEL])
    r = await client.post(PATH, json=body, headers=auth())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


async def test_anthropic_behind_the_completions_api(make_client: Any) -> None:
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(f"{ANTHROPIC}/v1/messages").mock(return_value=httpx.Response(200, json=MESSAGE))
        answers = [
            await sdk(client).completions.create(model="claude", prompt="hi", max_tokens=50) for _ in range(2)
        ]
        assert answers[0].choices[0].text == answers[1].choices[0].text == "Hi from Claude"
        assert route.call_count == 1
        route.mock(
            return_value=httpx.Response(
                200, content=anthropic_sse(["Hel", "lo"]), headers={"content-type": "text/event-stream"}
            )
        )
        streamed = []
        for _ in range(2):
            stream = await sdk(client).completions.create(
                model="claude", prompt="stream", max_tokens=50, stream=True
            )
            streamed.append("".join([c.choices[0].text async for c in stream if c.choices]))
        assert streamed == ["Hello", "Hello"] and route.call_count == 2
    sent = orjson.loads(route.calls.last.request.content)
    assert sent["messages"][0]["content"] in ("stream", [{"type": "text", "text": "stream"}])
