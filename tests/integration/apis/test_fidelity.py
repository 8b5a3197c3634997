"""Cache fidelity: what a client reads from a replayed answer is what it read live.

A provider answers with everything a chat answer can hold (audio, url_citation
annotations, reasoning, a refusal, a tool call, logprobs, service_tier,
system_fingerprint, and an unknown field at every level), as JSON and as a stream. On
both upstream routes (a `route: direct` model goes direct, a `route: litellm` one
goes through litellm) and in both directions (cached from a non-stream call, cached from
a stream), the answer is read back both ways through the official openai SDK and
compared with the live one, field by field.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import httpx
import orjson
import pytest
import redis
from openai.lib.streaming._deltas import accumulate_delta
from openai.types import Completion
from openai.types.chat import ChatCompletion

from tests.conftest import UPSTREAM_BASE, auth, cache_keys, provider_mock, sdk, sse_events

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
URL = f"{UPSTREAM_BASE}/chat/completions"
MODELS = [
    {
        "name": "direct",
        "litellm_model": "openai/gpt-4o-audio-preview",
        "api_base": UPSTREAM_BASE,
        "api_key": "sk-upstream-secret",
        "route": "direct",
    },
    {
        "name": "via-litellm",
        "litellm_model": "openai/gpt-4o-audio-preview",
        "api_base": UPSTREAM_BASE,
        "api_key": "sk-upstream-secret",
        "route": "litellm",
    },
]
ROUTES = ["direct", "via-litellm"]
EXPIRES = 4102444800  # 2100-01-01: the audio outlives any TTL here (the cap is tested below)
TOP = {
    "id": "chatcmpl-fid",
    "created": 1700000000,
    "model": "gpt-4o-audio-preview",
    "system_fingerprint": "fp_fid",
    "service_tier": "default",
    "x_top": {"region": "eu"},
}
LOGPROBS = [
    {"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": [], "x_lp": 1}
    for t in ("Hi", " there")
]
AUDIO = {"id": "audio_fid", "data": "UklGRiQAAABXQVZF", "transcript": "Hi there", "expires_at": EXPIRES}
CITE = {
    "type": "url_citation",
    "url_citation": {"url": "https://example.com/a", "title": "A", "start_index": 0, "end_index": 2},
}
TOOL = {"id": "call_fid", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "a"}'}}
USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21, "x_usage": {"audio": 3}}
ANSWER = {
    **TOP,
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hi there",
                "refusal": "Not the other part.",
                "reasoning_content": "The user greets.",
                "audio": AUDIO,
                "annotations": [CITE],
                "tool_calls": [TOOL],
                "x_msg": {"trace": [1, 2]},
            },
            "logprobs": {"content": LOGPROBS, "refusal": None},
            "finish_reason": "tool_calls",
            "x_choice": "c1",
        }
    ],
    "usage": USAGE,
}
DELTAS: list[tuple[dict[str, Any], dict[str, Any]]] = [  # (delta, other choice fields): the same answer
    ({"role": "assistant", "content": "", "refusal": None}, {}),
    ({"reasoning_content": "The user "}, {}),
    ({"reasoning_content": "greets."}, {}),
    ({"content": "Hi"}, {"logprobs": {"content": LOGPROBS[:1], "refusal": None}}),
    ({"content": " there"}, {"logprobs": {"content": LOGPROBS[1:], "refusal": None}}),
    ({"refusal": "Not the "}, {}),
    ({"refusal": "other part."}, {}),
    ({"audio": {"id": "audio_fid", "transcript": "Hi "}}, {}),
    ({"audio": {"transcript": "there"}}, {}),
    ({"audio": {"data": "UklGRiQAAABXQVZF", "expires_at": EXPIRES}}, {}),
    ({"annotations": [CITE]}, {}),
    ({"tool_calls": [{"index": 0, **TOOL, "function": {"name": "lookup", "arguments": ""}}]}, {}),
    ({"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]}, {}),
    ({"tool_calls": [{"index": 0, "function": {"arguments": '"a"}'}}]}, {}),
    ({"x_msg": {"trace": [1]}}, {}),
    ({"x_msg": {"trace": [2]}}, {}),
    ({}, {"finish_reason": "tool_calls", "x_choice": "c1"}),
]
# What litellm's own translation changes in this provider's answer, before the proxy sees
# it (the proxy stores and replays what litellm hands it, so these never reach a client,
# live or cached). As JSON: unknown message- and choice-level fields dropped. As a stream:
# it forwards a chunk only when its delta holds a field litellm knows, so `refusal` and
# `x_msg` streamed on their own are dropped, as is `x_choice` on the finish chunk; it
# recounts usage (dropping `x_usage`, adding `completion_tokens_details`) and stamps its
# own `created`.
LITELLM_JSON_CHANGES = {("choices", 0, "message", "x_msg"), ("choices", 0, "x_choice")}
LITELLM_STREAM_CHANGES = {
    ("choices", 0, "message", "refusal"),
    ("choices", 0, "message", "x_msg"),
    ("choices", 0, "x_choice"),
    ("created",),
    ("usage", "x_usage"),
    ("usage", "completion_tokens_details"),
}


def sse(deltas: list[tuple[dict[str, Any], dict[str, Any]]], usage: dict[str, Any] | None = USAGE) -> bytes:
    head = {**TOP, "object": "chat.completion.chunk", "usage": None}
    chunks = [
        {
            **head,
            "obfuscation": "x" * (n % 5),  # OpenAI's per-chunk padding: not part of the answer
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None, **rest}],
        }
        for n, (delta, rest) in enumerate(deltas)
    ]
    if usage is not None:
        chunks.append({**head, "choices": [], "usage": usage})
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def provider(answer: dict[str, Any] = ANSWER, stream: bytes | None = None) -> Any:
    def respond(request: httpx.Request) -> httpx.Response:
        if orjson.loads(request.content).get("stream"):
            body = sse(DELTAS) if stream is None else stream
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=answer)

    return respond


def ask(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Say hi, look it up, cite it."}],
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "pcm16"},
        "logprobs": True,
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        **extra,
    }


async def as_json(client: httpx.AsyncClient, model: str) -> tuple[str, dict[str, Any]]:
    """(X-Cache, the answer as the SDK parses it)."""
    raw = await sdk(client).chat.completions.with_raw_response.create(**ask(model))
    return raw.headers["x-cache"], raw.parse().model_dump()


async def as_stream(client: httpx.AsyncClient, model: str) -> tuple[str, list[dict[str, Any]]]:
    """(X-Cache, the chunks as the SDK parses them)."""
    raw = await sdk(client).chat.completions.with_raw_response.create(
        **ask(model), stream=True, stream_options={"include_usage": True}
    )
    return raw.headers["x-cache"], [chunk.to_dict() async for chunk in raw.parse()]


def accumulated(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a client reads from a stream, as the answer the SDK parses from JSON: each
    message by the SDK's own delta accumulation; choice logprobs concatenated (as the SDK
    does); other choice fields and top-level fields their last value; `obfuscation`
    dropped (as the SDK does)."""
    answer: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in copy.deepcopy(chunks):
        for key, value in chunk.items():
            if key not in ("choices", "object", "obfuscation") and value is not None:
                answer[key] = value
        for choice in chunk.get("choices") or ():
            acc = choices.setdefault(choice["index"], {"message": {}, "logprobs": None})
            accumulate_delta(acc["message"], choice.pop("delta", None) or {})
            logprobs = choice.pop("logprobs", None)
            if logprobs is not None:
                acc["logprobs"] = acc["logprobs"] or {}
                for part, items in logprobs.items():
                    if items is None:
                        acc["logprobs"].setdefault(part, None)
                    else:
                        acc["logprobs"][part] = (acc["logprobs"].get(part) or []) + items
            acc.update((k, v) for k, v in choice.items() if v is not None)
    for acc in choices.values():
        for call in acc["message"].get("tool_calls") or ():
            call.pop("index")  # only streams number the calls
    answer["object"] = "chat.completion"
    answer["choices"] = [choices[i] for i in sorted(choices)]
    return ChatCompletion.construct(**answer).model_dump()


def parsed(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer as the SDK parses it."""
    return ChatCompletion.construct(**copy.deepcopy(answer)).model_dump()


def differences(a: Any, b: Any, path: tuple[Any, ...] = ()) -> set[tuple[Any, ...]]:
    """The paths where two parsed answers differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {d for k in a.keys() | b.keys() for d in differences(a.get(k), b.get(k), (*path, k))}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return {d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, (*path, i))}
    return set() if a == b else {path}


def assert_rich(answer: dict[str, Any]) -> None:
    """Every kind of field made it to the client (`refusal` is checked with the route)."""
    message = answer["choices"][0]["message"]
    assert message["audio"] == AUDIO
    assert message["annotations"] == [CITE]
    assert message["reasoning_content"] == "The user greets."
    assert message["content"] == "Hi there"
    assert message["tool_calls"] == [TOOL]
    assert answer["choices"][0]["logprobs"]["content"] == LOGPROBS
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert (answer["service_tier"], answer["system_fingerprint"], answer["x_top"]) == (
        "default",
        "fp_fid",
        {"region": "eu"},
    )
    assert answer["usage"]["total_tokens"] == 21


@pytest.mark.parametrize("model", ROUTES)
async def test_cached_from_json_reads_back_the_same_both_ways(make_client: Any, model: str) -> None:
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(URL).mock(side_effect=provider())
        status, live = await as_json(client, model)
        again_status, again = await as_json(client, model)
        stream_status, chunks = await as_stream(client, model)
    assert (status, again_status, stream_status) == ("MISS", "HIT", "HIT")
    assert route.call_count == 1
    assert again == live
    assert accumulated(chunks) == live
    assert_rich(live)
    if model == "direct":
        assert live == parsed(ANSWER)
    else:
        assert differences(live, parsed(ANSWER)) == LITELLM_JSON_CHANGES
    # A replayed stream reads as a live one: every chunk a chat.completion.chunk with the
    # answer's top-level fields; usage only in the last, as asked.
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    top = ("id", "created", "model", "service_tier", "system_fingerprint", "x_top")
    assert all({k: c.get(k) for k in top} == {k: live[k] for k in top} for c in chunks)
    assert [bool(c.get("usage")) for c in chunks] == [False] * (len(chunks) - 1) + [True]


@pytest.mark.parametrize("model", ROUTES)
async def test_cached_from_a_stream_reads_back_the_same_both_ways(make_client: Any, model: str) -> None:
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(URL).mock(side_effect=provider())
        status, live_chunks = await as_stream(client, model)
        json_status, as_answer = await as_json(client, model)
        stream_status, chunks = await as_stream(client, model)
    assert (status, json_status, stream_status) == ("MISS", "HIT", "HIT")
    assert route.call_count == 1
    live = accumulated(live_chunks)
    assert as_answer == live
    assert accumulated(chunks) == live
    assert_rich(live)
    if model == "direct":
        assert live == parsed(ANSWER)  # the stored stream is the provider's own JSON answer
    else:
        assert differences(live, parsed(ANSWER)) == LITELLM_STREAM_CHANGES


@pytest.mark.parametrize("model", ROUTES)
async def test_a_stream_that_splits_typed_parts_is_served_not_stored(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str, model: str
) -> None:
    """litellm sends Anthropic thinking blocks as partial blocks, one per chunk: joined they
    would be two blocks where the JSON answer has one. Served, not stored, counted."""
    blocks = [
        (
            {
                "role": "assistant",
                "thinking_blocks": [{"type": "thinking", "thinking": "Let me ", "signature": "s"}],
            },
            {},
        ),
        ({"thinking_blocks": [{"type": "thinking", "thinking": "think."}]}, {}),
        ({"content": "Done."}, {}),
        ({}, {"finish_reason": "stop"}),
    ]
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(URL).mock(side_effect=provider(stream=sse(blocks)))
        first = await client.post(CHAT, json=ask(model, stream=True), headers=auth())
        second = await client.post(CHAT, json=ask(model, stream=True), headers=auth())
    assert route.call_count == 2
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "MISS")
    events = sse_events(first.content)
    assert events[-1] == "[DONE]"
    assert [e["choices"][0]["delta"].get("thinking_blocks") for e in events[:2]] == [
        [{"type": "thinking", "thinking": "Let me ", "signature": "s"}],
        [{"type": "thinking", "thinking": "think."}],
    ]  # served as the provider sent it
    assert cache_keys(redis_sync, key_prefix) == []
    stats = (await client.get("/stats", headers=auth("admin"))).json()
    assert stats["windows"]["all"]["tenants"]["acme"]["models"][model]["not_cacheable"] == 2


REFUSAL_ANSWER = {
    **TOP,
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": USAGE,
}
REFUSAL_DELTAS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"role": "assistant", "content": None, "refusal": ""}, {}),
    ({"refusal": "I can't "}, {}),
    ({"refusal": "help with that."}, {}),
    ({}, {"finish_reason": "stop"}),
]


@pytest.mark.parametrize("model, stored", [("direct", True), ("via-litellm", False)])
async def test_a_refusal_streamed_alone(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str, model: str, stored: bool
) -> None:
    """Direct: cached from the stream and read back as JSON, as the provider said it.
    Through litellm the refusal never reaches the client (its stream drops a delta that
    holds only a refusal): what is left says nothing, so it is served and not stored, and
    a JSON request then gets the refusal from the provider."""
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(URL).mock(side_effect=provider(REFUSAL_ANSWER, sse(REFUSAL_DELTAS)))
        status, live_chunks = await as_stream(client, model)
        json_status, as_answer = await as_json(client, model)
    refusal = accumulated(live_chunks)["choices"][0]["message"]["refusal"]
    assert refusal == ("I can't help with that." if stored else "")
    assert as_answer["choices"][0]["message"]["refusal"] == "I can't help with that."
    assert (status, json_status, route.call_count) == (("MISS", "HIT", 1) if stored else ("MISS", "MISS", 2))
    if stored:
        assert as_answer == accumulated(live_chunks) == parsed(REFUSAL_ANSWER)
    assert len(cache_keys(redis_sync, key_prefix)) == 1  # the stream's answer or the JSON one
    stats = (await client.get("/stats", headers=auth("admin"))).json()
    assert stats["windows"]["all"]["tenants"]["acme"]["models"][model]["not_cacheable"] == (
        0 if stored else 1
    )


async def test_a_stream_without_usage_is_served_not_stored(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    """A non-stream replay must carry usage; the proxy asked for it, the provider sent none."""
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(URL).mock(side_effect=provider(stream=sse(DELTAS, usage=None)))
        first = await client.post(CHAT, json=ask("direct", stream=True), headers=auth())
        second = await client.post(CHAT, json=ask("direct"), headers=auth())
    assert orjson.loads(route.calls[0].request.content)["stream_options"] == {"include_usage": True}
    assert first.headers["x-cache"] == "MISS" and sse_events(first.content)[-1] == "[DONE]"
    assert second.headers["x-cache"] == "MISS"  # the JSON answer came from the provider
    assert route.call_count == 2
    assert len(cache_keys(redis_sync, key_prefix)) == 1  # the JSON answer, stored
    stats = (await client.get("/stats", headers=auth("admin"))).json()
    assert stats["windows"]["all"]["tenants"]["acme"]["models"]["direct"]["not_cacheable"] == 1


@pytest.mark.parametrize("model", ROUTES)
async def test_the_entry_never_outlives_the_audio(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str, model: str
) -> None:
    soon = int(time.time()) + 120
    answer = copy.deepcopy(ANSWER)
    answer["choices"][0]["message"]["audio"]["expires_at"] = soon
    client = await make_client(models=MODELS)  # cache.ttl_seconds: an hour or more
    with provider_mock() as mock:
        mock.post(URL).mock(side_effect=provider(answer))
        assert (await client.post(CHAT, json=ask(model), headers=auth())).headers["x-cache"] == "MISS"
    (key,) = cache_keys(redis_sync, key_prefix)
    assert 0 < redis_sync.ttl(key) <= soon - time.time()


@pytest.mark.parametrize("expires_in", [-10, 2])
async def test_audio_that_has_expired_or_is_about_to_is_not_stored(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str, expires_in: int
) -> None:
    answer = copy.deepcopy(ANSWER)
    answer["choices"][0]["message"]["audio"]["expires_at"] = int(time.time()) + expires_in
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(URL).mock(side_effect=provider(answer))
        first = await client.post(CHAT, json=ask("direct"), headers=auth())
        second = await client.post(CHAT, json=ask("direct"), headers=auth())
    assert (
        first.json()["choices"][0]["message"]["audio"]["expires_at"]
        == answer["choices"][0]["message"]["audio"]["expires_at"]
    )
    assert (first.headers["x-cache"], second.headers["x-cache"], route.call_count) == ("MISS", "MISS", 2)
    assert cache_keys(redis_sync, key_prefix) == []
    metrics = (await client.get("/metrics", headers=auth("admin"))).text
    assert 'llmcp_not_cacheable_total{model="direct",tenant="acme"} 2.0' in metrics


# Legacy completions: always called directly for `openai/` models (`direct_for_openai_models`).
COMPLETIONS_URL = f"{UPSTREAM_BASE}/completions"
TEXT_TOP = {
    "id": "cmpl-fid",
    "created": 1700000000,
    "model": "gpt-3.5-turbo-instruct",
    "system_fingerprint": "fp_c",
    "x_top": [1],
}
TEXT_PIECES = [
    {
        "text": "Hi",
        "logprobs": {
            "tokens": ["Hi"],
            "token_logprobs": [-0.1],
            "top_logprobs": [{"Hi": -0.1}],
            "text_offset": [0],
        },
    },
    {
        "text": " there",
        "logprobs": {
            "tokens": [" there"],
            "token_logprobs": [-0.2],
            "top_logprobs": [{" there": -0.2}],
            "text_offset": [2],
        },
    },
    {"text": "", "logprobs": None, "finish_reason": "length", "x_choice": {"k": "v"}},
]
TEXT_ANSWER = {
    **TEXT_TOP,
    "object": "text_completion",
    "choices": [
        {
            "text": "Hi there",
            "index": 0,
            "logprobs": {
                "tokens": ["Hi", " there"],
                "token_logprobs": [-0.1, -0.2],
                "top_logprobs": [{"Hi": -0.1}, {" there": -0.2}],
                "text_offset": [0, 2],
            },
            "finish_reason": "length",
            "x_choice": {"k": "v"},
        }
    ],
    "usage": USAGE,
}


def text_provider(request: httpx.Request) -> httpx.Response:
    if not orjson.loads(request.content).get("stream"):
        return httpx.Response(200, json=TEXT_ANSWER)
    head = {**TEXT_TOP, "object": "text_completion"}
    chunks = [{**head, "choices": [{"index": 0, "finish_reason": None, **piece}]} for piece in TEXT_PIECES]
    chunks.append({**head, "choices": [], "usage": USAGE})
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


async def text_as_json(client: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    raw = await sdk(client).completions.with_raw_response.create(
        model="direct", prompt="Say hi", logprobs=1, max_tokens=2
    )
    return raw.headers["x-cache"], raw.parse().model_dump()


async def text_as_stream(client: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    """(X-Cache, what a client reads from the stream: texts and logprob lists joined per
    choice, other fields their last value), as the SDK parses a JSON answer."""
    raw = await sdk(client).completions.with_raw_response.create(
        model="direct",
        prompt="Say hi",
        logprobs=1,
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    answer: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    async for chunk in raw.parse():
        data = chunk.to_dict()
        answer.update((k, v) for k, v in data.items() if k not in ("choices", "object") and v is not None)
        for choice in data.get("choices") or ():
            acc = choices.setdefault(choice["index"], {"text": "", "logprobs": None})
            acc["text"] += choice.pop("text", "") or ""
            logprobs = choice.pop("logprobs", None)
            if logprobs:
                acc["logprobs"] = {k: (acc["logprobs"] or {}).get(k, []) + v for k, v in logprobs.items()}
            acc.update((k, v) for k, v in choice.items() if v is not None)
    answer["object"] = "text_completion"
    answer["choices"] = [choices[i] for i in sorted(choices)]
    return raw.headers["x-cache"], Completion.construct(**answer).model_dump()


@pytest.mark.parametrize("first", ["json", "stream"])
async def test_legacy_completions_read_back_the_same_both_ways(make_client: Any, first: str) -> None:
    client = await make_client(models=MODELS)
    fill, other = (text_as_json, text_as_stream) if first == "json" else (text_as_stream, text_as_json)
    with provider_mock() as mock:
        route = mock.post(COMPLETIONS_URL).mock(side_effect=text_provider)
        status, live = await fill(client)
        hits = [await fill(client), await other(client)]
    assert route.call_count == 1
    assert [status, *(s for s, _ in hits)] == ["MISS", "HIT", "HIT"]
    assert [answer for _, answer in hits] == [live, live]
    assert live == Completion.construct(**copy.deepcopy(TEXT_ANSWER)).model_dump()
