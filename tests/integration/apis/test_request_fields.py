"""Every request field reaches the provider on both upstream routes (litellm and direct),
bypass fields are never cached, embedding fields key and forward like chat's, and the
Responses API shows the provider's own ids. Provider mocked with respx, real Redis."""

from __future__ import annotations

import string
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import UPSTREAM_BASE, auth, openai_completion, provider_mock

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"
RESP = "/v1/responses"
UPSTREAM = {"litellm_model": "openai/gpt-4o-mini", "api_base": UPSTREAM_BASE, "api_key": "sk-upstream-secret"}
# The same OpenAI-compatible server, through litellm and directly.
ROUTES = {
    "litellm": {"name": "via-litellm", "route": "litellm", **UPSTREAM},
    "direct": {"name": "direct", "route": "direct", **UPSTREAM},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(string.printable, max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(string.ascii_letters, max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
extension_fields = st.dictionaries(st.from_regex(r"x_[a-z]{1,8}", fullmatch=True), json_values, max_size=4)
known_fields = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.sampled_from([0, 0.3, 1.5]),
        "top_p": st.sampled_from([0.5, 0.9]),
        "seed": st.integers(0, 10_000),
        "max_tokens": st.integers(1, 500),
        "stop": st.lists(st.text(string.ascii_letters, min_size=1, max_size=4), min_size=1, max_size=3),
        "presence_penalty": st.sampled_from([-1, 0.5]),
        "user": st.text(string.ascii_letters, min_size=1, max_size=8),
        "metadata": st.dictionaries(
            st.text(string.ascii_lowercase, min_size=1, max_size=4), st.text(max_size=4)
        ),
        "store": st.just(False),
        "service_tier": st.sampled_from(["default", "flex"]),
        "logprobs": st.booleans(),
        "parallel_tool_calls": st.booleans(),
    },
)


def drawn(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """`count` varied examples of `strategy`, drawn by hypothesis."""
    out: list[Any] = []

    @settings(max_examples=count, database=None, deadline=None)
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    return out


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_the_provider_receives_every_field_the_client_sent(make_client: Any, route: str) -> None:
    model = ROUTES[route]
    client = await make_client(models=[model])
    bodies = drawn(st.tuples(known_fields, extension_fields), 30)
    with provider_mock() as mock:
        sent = mock.post(f"{UPSTREAM_BASE}/chat/completions").mock(
            return_value=httpx.Response(200, json=openai_completion("ok"))
        )
        for i, (known, extensions) in enumerate(bodies):
            body = {**known, **extensions, "model": model["name"]}
            body["messages"] = [{"role": "user", "content": f"question {i}"}]
            reply = await client.post(CHAT, json=body, headers=auth())
            assert reply.status_code == 200, reply.text
            payload = orjson.loads(sent.calls.last.request.content)
            for name, value in body.items():
                if name == "model":
                    assert payload["model"] == "gpt-4o-mini"
                elif value is not None:
                    assert payload.get(name) == value, (route, name, value, payload)


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_store_true_bypasses_the_cache_and_reaches_the_provider(make_client: Any, route: str) -> None:
    model = ROUTES[route]
    client = await make_client(models=[model])
    ask = {"model": model["name"], "messages": [{"role": "user", "content": "keep this"}]}
    with provider_mock() as mock:
        sent = mock.post(f"{UPSTREAM_BASE}/chat/completions").mock(
            return_value=httpx.Response(200, json=openai_completion("ok"))
        )
        for _ in range(2):
            reply = await client.post(CHAT, json={**ask, "store": True}, headers=auth())
            assert reply.headers["x-cache"] == "BYPASS"
            assert orjson.loads(sent.calls.last.request.content)["store"] is True
        assert sent.call_count == 2
        plain = [await client.post(CHAT, json={**ask, "store": False}, headers=auth()) for _ in range(2)]
        assert [r.headers["x-cache"] for r in plain] == ["MISS", "HIT"] and sent.call_count == 3


def response(ident: str = "resp_provider_1") -> dict[str, Any]:
    return {
        "id": ident,
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "gpt-4o-mini",
        "output": [
            {
                "type": "message",
                "id": "msg_provider_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "hi", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
    }


@pytest.mark.parametrize(
    "extra",
    [
        {"conversation": "conv_abc"},
        {"conversation": {"id": "conv_abc"}},
        {"prompt": {"id": "pmpt_1"}},
        {"store": True},
        {"background": True},
    ],
)
async def test_server_side_state_is_never_cached(make_client: Any, extra: dict[str, Any]) -> None:
    client = await make_client(models=[ROUTES["direct"]])
    body = {"model": "direct", "input": "continue", **extra}
    with provider_mock() as mock:
        sent = mock.post(f"{UPSTREAM_BASE}/responses").mock(return_value=httpx.Response(200, json=response()))
        replies = [await client.post(RESP, json=body, headers=auth()) for _ in range(2)]
    assert [r.headers["x-cache"] for r in replies] == ["BYPASS", "BYPASS"] and sent.call_count == 2
    payload = orjson.loads(sent.calls.last.request.content)
    assert all(payload[k] == v for k, v in extra.items())


async def test_a_pinned_prompt_version_is_cached(make_client: Any) -> None:
    client = await make_client(models=[ROUTES["direct"]])
    body = {"model": "direct", "prompt": {"id": "pmpt_1", "version": "3"}}
    with provider_mock() as mock:
        sent = mock.post(f"{UPSTREAM_BASE}/responses").mock(return_value=httpx.Response(200, json=response()))
        replies = [await client.post(RESP, json=body, headers=auth()) for _ in range(2)]
    assert [r.headers["x-cache"] for r in replies] == ["MISS", "HIT"] and sent.call_count == 1


async def test_responses_clients_see_the_providers_ids_through_litellm(make_client: Any) -> None:
    client = await make_client(models=[ROUTES["litellm"]])
    with provider_mock() as mock:
        mock.post(f"{UPSTREAM_BASE}/responses").mock(return_value=httpx.Response(200, json=response()))
        live = await client.post(RESP, json={"model": "via-litellm", "input": "hi"}, headers=auth())
        cached = await client.post(RESP, json={"model": "via-litellm", "input": "hi"}, headers=auth())
    assert live.json()["id"] == "resp_provider_1" and live.json()["output"][0]["id"] == "msg_provider_1"
    assert cached.headers["x-cache"] == "HIT" and cached.json()["id"] == "resp_provider_1"


def embeddings_provider(request: httpx.Request) -> httpx.Response:
    inputs = orjson.loads(request.content)["input"]
    data = [
        {"object": "embedding", "index": i, "embedding": [float(len(str(x))), 0.5]}
        for i, x in enumerate(inputs)
    ]
    usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
    return httpx.Response(200, json={"object": "list", "data": data, "model": "e", "usage": usage})


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_embedding_fields_key_and_forward_like_chat(make_client: Any, route: str) -> None:
    model = ROUTES[route]
    client = await make_client(models=[model])
    with provider_mock() as mock:
        sent = mock.post(f"{UPSTREAM_BASE}/embeddings").mock(side_effect=embeddings_provider)

        async def embed(**fields: Any) -> httpx.Response:
            reply = await client.post(EMB, json={"model": model["name"], **fields}, headers=auth())
            assert reply.status_code == 200, reply.text
            return reply

        query = await embed(input=["a text"], input_type="query", truncate="END", user="u1")
        payload = orjson.loads(sent.calls.last.request.content)
        assert (payload["input_type"], payload["truncate"], payload["user"]) == ("query", "END", "u1")
        document = await embed(input=["a text"], input_type="document", truncate="END")
        assert (query.headers["x-cache"], document.headers["x-cache"]) == ("MISS", "MISS")
        again = await embed(input=["a text"], input_type="query", truncate="END", user="someone else")
        assert again.headers["x-cache"] == "HIT" and sent.call_count == 2  # `user` is not in the key


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_a_repeated_input_goes_upstream_once(make_client: Any, route: str) -> None:
    model = ROUTES[route]
    client = await make_client(models=[model])
    inputs = ["x", "yy", "x", "zzz", "yy", "x"]
    with provider_mock() as mock:
        sent = mock.post(f"{UPSTREAM_BASE}/embeddings").mock(side_effect=embeddings_provider)
        reply = await client.post(EMB, json={"model": model["name"], "input": inputs}, headers=auth())
    assert orjson.loads(sent.calls.last.request.content)["input"] == ["x", "yy", "zzz"]
    vectors = [d["embedding"] for d in reply.json()["data"]]
    assert [v[0] for v in vectors] == [float(len(x)) for x in inputs]
    assert [d["index"] for d in reply.json()["data"]] == list(range(len(inputs)))
