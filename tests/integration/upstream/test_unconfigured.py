"""A model whose provider needs an API key the proxy lacks: a 503 `model_not_configured`
naming the variable to set, on every endpoint, before any call to the provider; the
demo model still answers; the rate-limit reservation comes back."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import redis

from proxy.testing.transports import HttpxTransport
from proxy.upstream.selector import Upstreams
from tests.conftest import TENANT_KEYS, auth, eventually, provider_mock, sdk

pytestmark = pytest.mark.anyio
MODELS = [
    {"name": "demo", "litellm_model": "demo/echo"},
    # As the shipped config.yaml reads it with OPENAI_API_KEY unset: `${OPENAI_API_KEY:-}`.
    {"name": "gpt-4o-mini", "litellm_model": "openai/gpt-4o-mini", "api_key": ""},
    {"name": "emb", "litellm_model": "openai/text-embedding-3-small"},
    {"name": "claude", "litellm_model": "anthropic/claude-3-5-haiku-latest"},
]
BURST = 100_000
TENANTS = [
    {
        "name": "acme",
        "api_keys": [TENANT_KEYS["acme"]],
        "limits": {"tokens_per_minute": 60, "burst_tokens": BURST},
    }
]


@pytest.fixture
async def client(make_client: Any) -> Any:
    # No OPENAI_API_KEY / ANTHROPIC_API_KEY here, whatever the machine's environment holds.
    upstreams = Upstreams(5.0, transport=HttpxTransport(), environ={})
    return await make_client(upstreams=upstreams, models=MODELS, tenants=TENANTS)


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize(
    "path, body, env_var",
    [
        ("/v1/chat/completions", chat("gpt-4o-mini"), "OPENAI_API_KEY"),
        ("/v1/chat/completions", chat("gpt-4o-mini", stream=True), "OPENAI_API_KEY"),
        ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi"}, "OPENAI_API_KEY"),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, "OPENAI_API_KEY"),
        ("/v1/embeddings", {"model": "emb", "input": ["a", "b"]}, "OPENAI_API_KEY"),
        ("/v1/chat/completions", chat("claude"), "ANTHROPIC_API_KEY"),
    ],
)
async def test_a_model_without_a_key_is_a_503_naming_the_variable(
    client: Any, path: str, body: dict[str, Any], env_var: str
) -> None:
    with provider_mock():  # no route: a call to any provider would fail the test
        response = await client.post(path, json=body, headers=auth())
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "model_not_configured"
    assert env_var in error["message"] and repr(body["model"]) in error["message"]
    assert response.headers["x-should-retry"] == "false"  # the SDK's retries cannot help


async def test_the_demo_model_still_answers(client: Any) -> None:
    response = await client.post("/v1/chat/completions", json=chat("demo"), headers=auth())
    assert response.status_code == 200


async def test_the_sdk_sees_the_503_once_and_the_reservation_comes_back(
    client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    with provider_mock(), pytest.raises(openai.InternalServerError) as raised:
        await sdk(client).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], max_tokens=4000
        )
    assert raised.value.status_code == 503 and raised.value.code == "model_not_configured"
    key = f"{key_prefix}:v1:{{acme}}:rl:t:tokens"

    async def refunded() -> bool:
        return float(redis_sync.hget(key, "level") or 0) >= BURST - 1

    await eventually(refunded, timeout=5, what="the reservation of a 503 was not given back")


async def test_a_key_in_the_environment_serves_the_model(make_client: Any) -> None:
    upstreams = Upstreams(5.0, transport=HttpxTransport(), environ={"OPENAI_API_KEY": "sk-from-env"})
    client = await make_client(upstreams=upstreams, models=MODELS, tenants=TENANTS)
    with provider_mock() as mock:
        route = mock.post("https://api.openai.com/v1/chat/completions").respond(
            200,
            json={
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4o-mini",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )
        response = await client.post("/v1/chat/completions", json=chat("gpt-4o-mini"), headers=auth())
    assert response.status_code == 200 and route.called
