"""The real thing: `llm-cache-proxy serve` in a subprocess, a fake provider over real HTTP,
and the official openai SDK as the client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from tests.e2e.stack import Stack, spawn, start_stack, stop, stop_stack
from tests.servers import child_env, free_port, wait_for_http

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_sync: redis.Redis
) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("e2e"), redis_url)
    yield stack
    stop_stack(stack, redis_sync)


def test_non_stream_miss_then_hit(stack: Stack) -> None:
    client = stack.client()
    before = stack.upstream_calls()
    messages = [{"role": "user", "content": f"non-stream {uuid.uuid4()}"}]
    first = client.chat.completions.with_raw_response.create(model="fake", messages=messages)
    second = client.chat.completions.with_raw_response.create(model="fake", messages=messages)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert stack.upstream_calls() - before == 1
    a, b = first.parse(), second.parse()
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content.startswith("This is the demo model. You said: non-stream")
    assert b.usage is not None and b.usage.total_tokens > 0


def _collect(stream: Any) -> tuple[str, Any]:
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    return text, usage


def test_stream_miss_then_hit(stack: Stack) -> None:
    client = stack.client()
    before = stack.upstream_calls()
    messages = [{"role": "user", "content": f"stream {uuid.uuid4()}"}]
    results = []
    for _ in range(2):
        with client.chat.completions.with_streaming_response.create(
            model="fake", messages=messages, stream=True, stream_options={"include_usage": True}
        ) as response:
            results.append((response.headers["x-cache"], *_collect(response.parse())))
    (miss, text1, usage1), (hit, text2, usage2) = results
    assert (miss, hit) == ("MISS", "HIT")
    assert text1 == text2 and text1.startswith("This is the demo model. You said: stream")
    assert usage1 == usage2 and usage1 is not None
    assert stack.upstream_calls() - before == 1
    # The same entry answers a non-stream request.
    plain = client.chat.completions.with_raw_response.create(model="fake", messages=messages)
    assert plain.headers["x-cache"] == "HIT"
    assert plain.parse().choices[0].message.content == text1


def test_tenants_are_isolated(stack: Stack) -> None:
    messages = [{"role": "user", "content": f"isolation {uuid.uuid4()}"}]
    before = stack.upstream_calls()
    stack.client("acme").chat.completions.create(model="fake", messages=messages)
    other = stack.client("globex").chat.completions.with_raw_response.create(model="fake", messages=messages)
    assert other.headers["x-cache"] == "MISS"
    assert stack.upstream_calls() - before == 2


def test_bad_input_gets_sdk_errors(stack: Stack) -> None:
    client = stack.client()
    ok = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="fake", messages=ok, temperature=7)
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=ok)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=stack.base_url, api_key="sk-wrong-key", max_retries=0).chat.completions.create(
            model="fake", messages=ok
        )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fake", messages=[])


def test_upstream_failure_is_a_clear_error_and_not_cached(stack: Stack) -> None:
    client = stack.client()
    messages = [{"role": "user", "content": f"failing {uuid.uuid4()}"}]
    stack.upstream_mode(mode="error", status=500)
    try:
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="fake", messages=messages)
        assert failed.value.status_code == 502
    finally:
        stack.upstream_mode(mode="ok")
    answer = client.chat.completions.with_raw_response.create(model="fake", messages=messages)
    assert answer.headers["x-cache"] == "MISS"


def test_serve_with_no_redis_configured_uses_the_embedded_server(tmp_path: Path) -> None:
    """The README's first command on a fresh machine: no REDIS_URL, no redis.url, no key."""
    repo_config = Path(__file__).resolve().parents[2] / "config.yaml"
    port = free_port()
    env = child_env()
    env.pop("OPENAI_API_KEY", None)
    server = spawn(
        ["-m", "proxy", "serve", "--config", str(repo_config), "--port", str(port)],
        env,
        tmp_path,
        tmp_path / "log",
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-demo-key", max_retries=0)
        messages = [{"role": "user", "content": "hello from a fresh machine"}]
        first = client.chat.completions.with_raw_response.create(model="demo", messages=messages)
        second = client.chat.completions.with_raw_response.create(model="demo", messages=messages)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    finally:
        stop(server)
    assert (tmp_path / ".llm-cache-proxy" / "redis.db").exists() or (tmp_path / ".llm-cache-proxy").is_dir()
    assert "Traceback" not in (tmp_path / "log").read_text()


def test_direct_model_over_real_http(stack: Stack) -> None:
    """route: direct goes to the OpenAI-compatible server directly (aiohttp, no litellm)."""
    client = stack.client()
    messages = [{"role": "user", "content": f"direct {uuid.uuid4()}"}]
    before = stack.upstream_calls()
    first = client.chat.completions.with_raw_response.create(model="fake-direct", messages=messages)
    second = client.chat.completions.with_raw_response.create(model="fake-direct", messages=messages)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.parse().choices[0].message.content.startswith("This is the demo model. You said: direct")
    streamed = [
        _collect(
            client.chat.completions.create(
                model="fake-direct",
                messages=[*messages, {"role": "user", "content": "s"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        for _ in range(2)
    ]
    assert streamed[0] == streamed[1] and streamed[0][1] is not None
    assert stack.upstream_calls() - before == 2


def test_embeddings_through_the_sdk(stack: Stack) -> None:
    """The SDK asks for base64 by default and decodes it; per-input caching end to end."""
    client = stack.client()
    run = uuid.uuid4().hex[:6]
    first = [f"{run} chunk {i}" for i in range(8)]
    before = stack.upstream_calls()
    miss = client.embeddings.with_raw_response.create(model="fake", input=first)
    assert miss.headers["x-cache"] == "MISS"
    partial = client.embeddings.with_raw_response.create(model="fake", input=[*first, f"{run} new one"])
    assert partial.headers["x-cache"] == "PARTIAL" and partial.headers["x-cache-hits"] == "8/9"
    assert stack.upstream_calls() - before == 2
    vectors = [d.embedding for d in partial.parse().data]
    assert [d.embedding for d in miss.parse().data] == vectors[:8]
    floats = client.embeddings.create(model="fake", input=first, encoding_format="float")
    assert [d.embedding for d in floats.data] == vectors[:8]
    assert stack.upstream_calls() - before == 2
