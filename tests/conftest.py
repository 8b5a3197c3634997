"""Shared fixtures: a real Redis, per-test key prefixes, configs, and in-process apps.

Redis is `REDIS_URL` when set (CI points it at the machine's server, own DB number),
else an embedded redis-server this suite starts. Every test writes under its own key
prefix and deletes only keys under it, so the suite never touches anyone else's data.

With `CI` set a skipped test fails the run (`tests/ci_skips.py`); locally skips print
their reason (`-rs` in pyproject). `tests/container/` is collected only with
LLMCP_TEST_IMAGE set (`.ci/container` sets it once it has built the image), so a plain
run neither runs nor skips it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from proxy.config import Config, parse_config
from proxy.http.app import create_app
from proxy.testing.transports import HttpxTransport
from proxy.upstream.selector import Upstreams

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

pytest_plugins = ["pytester", "tests.ci_skips"]

# The image's own tests run only where `.ci/container` built one (it sets LLMCP_TEST_IMAGE).
collect_ignore = [] if os.environ.get("LLMCP_TEST_IMAGE") else ["container"]

TENANT_KEYS = {"acme": "sk-acme-test-key", "globex": "sk-globex-test-key"}
ADMIN_KEY = "sk-admin-test-key"
UPSTREAM_BASE = "http://upstream.test/v1"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`LLMCP_TEST_CLUSTER=1`: a 3-primary Redis Cluster started for the session (the whole
    suite then runs against it); else `REDIS_URL`; else an embedded server."""
    if os.environ.get("LLMCP_TEST_CLUSTER") == "1":
        from tests.servers import RedisClusterProcesses

        cluster = RedisClusterProcesses(tmp_path_factory.mktemp("cluster")).start()
        yield cluster.url
        cluster.stop()
        return
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from proxy.store.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), "512mb")
    yield server.url
    server.close()


@pytest.fixture(scope="session")
def redis_sync(redis_url: str) -> Iterator[redis.Redis]:
    client = sync_client(redis_url)
    yield client
    client.close()


def sync_client(url: str) -> redis.Redis:
    """A plain client, or the cluster client (scans every primary, splits multi-key calls)."""
    if "," not in url:
        return redis.Redis.from_url(url)
    from redis.cluster import ClusterNode, RedisCluster

    nodes = [ClusterNode("127.0.0.1", int(u.rsplit(":", 1)[1])) for u in url.split(",")]
    return RedisCluster(startup_nodes=nodes)  # type: ignore[return-value]


@pytest.fixture
def key_prefix(redis_sync: redis.Redis) -> Iterator[str]:
    prefix = f"llmcptest{uuid.uuid4().hex[:10]}"
    yield prefix
    keys = list(redis_sync.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        redis_sync.unlink(*keys)


def own_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}:*", count=1000))


def cache_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}:v1:*:chat:*", count=1000))


# Keys without a TTL by design, each justified in docs/keyspace.md.
NO_TTL_BY_DESIGN = (b":stats:all",)


def keys_without_ttl(client: redis.Redis, prefix: str) -> list[bytes]:
    """Every key under the prefix with no TTL, except the documented exceptions."""
    return [k for k in own_keys(client, prefix) if client.ttl(k) < 0 and not k.endswith(NO_TTL_BY_DESIGN)]


def build_config(key_prefix: str, **overrides: Any) -> Config:
    """A config with two tenants, a demo model and a respx-mocked OpenAI model."""
    raw: dict[str, Any] = {
        "redis": {"key_prefix": key_prefix},
        "models": [
            {"name": "demo", "litellm_model": "demo/echo"},
            {
                "name": "gpt-4o-mini",
                "litellm_model": "openai/gpt-4o-mini",
                "api_base": UPSTREAM_BASE,
                "api_key": "sk-upstream-secret",
            },
        ],
        "tenants": [{"name": n, "api_keys": [k]} for n, k in TENANT_KEYS.items()],
        "admin": {"api_keys": [ADMIN_KEY]},
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **value}
        else:
            raw[section] = value
    return parse_config(raw, {})


def auth(tenant: str = "acme") -> dict[str, str]:
    key = ADMIN_KEY if tenant == "admin" else TENANT_KEYS[tenant]
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


AppFactory = Callable[..., Any]


@pytest.fixture
async def make_client(redis_url: str, key_prefix: str) -> AsyncIterator[Callable[..., Any]]:
    """`await make_client(**config_overrides)` -> httpx client bound to a live app."""
    stack: list[Any] = []

    async def factory(
        upstreams: Upstreams | None = None, url: str | None = None, **overrides: Any
    ) -> httpx.AsyncClient:
        config = build_config(key_prefix, **overrides)
        # Direct upstream calls over httpx, where respx sees them (the server's HTTP/1.1
        # transport is exercised by its own tests and end to end); litellm's own httpx clients are
        # seen by respx's "httpx" mocker whatever transport they use.
        upstreams = upstreams or Upstreams(config.upstream.timeout_seconds, transport=HttpxTransport())
        app = create_app(config, url or redis_url, upstreams)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy")
        stack.append((lifespan, client))
        return client

    yield factory
    for lifespan, client in reversed(stack):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def asgi_post(path: str, headers: dict[str, str]) -> dict[str, Any]:
    """The ASGI scope of a JSON POST to the app."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (k.lower().encode(), v.encode())
            for k, v in {**headers, "Content-Type": "application/json"}.items()
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("proxy", 80),
    }


def openai_completion(content: str = "Hello!", finish: str = "stop", n: int = 1) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def openai_sse(pieces: list[str], finish: bool = True, usage: bool = True) -> bytes:
    import orjson

    head = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    out = [
        {
            **head,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
    ]
    out += [
        {**head, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces
    ]
    if finish:
        out.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if usage:
            out.append(
                {
                    **head,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 4,
                        "completion_tokens": len(pieces),
                        "total_tokens": 4 + len(pieces),
                    },
                }
            )
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in out)
    return body + (b"data: [DONE]\n\n" if finish else b"")


def sse_events(raw: bytes) -> list[Any]:
    """The `data:` events of an SSE body: JSON objects, and the "[DONE]" sentinel as is."""
    import orjson

    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def sdk(client: httpx.AsyncClient, tenant: str = "acme") -> Any:
    """The official openai SDK, talking to the in-process app through `client`."""
    import openai

    return openai.AsyncOpenAI(
        base_url="http://proxy/v1", api_key=TENANT_KEYS[tenant], http_client=client, max_retries=0
    )


def provider_mock(**options: Any) -> Any:
    """respx in front of the provider's HTTP API: an unmocked request fails the test.

    respx's "httpx" mocker sees every httpx client, litellm's included (whatever transport
    litellm gives them), and the direct upstream's `HttpxTransport`; the test's own client
    to the in-process app (`http://proxy`) passes through."""
    import respx

    mock = respx.mock(using="httpx", assert_all_mocked=True, **options)
    mock.route(host="proxy").pass_through()
    return mock


@pytest.fixture
def upstream() -> Iterator[Any]:
    with provider_mock() as mock:
        yield mock


async def eventually(check: Callable[[], Any], timeout: float = 1.0, what: str = "not seen in time") -> None:
    """Poll the async `check` until it is true; fail with `what` after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.005)
