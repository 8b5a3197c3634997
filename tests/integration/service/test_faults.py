"""Redis dying and coming back: requests keep being answered, the cache resumes by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import auth
from tests.servers import RedisProcess, free_port

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
DEMO = {"model": "demo", "messages": [{"role": "user", "content": "still there?"}]}


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture
def fast_demo() -> Any:
    from proxy.upstream.demo import DemoUpstream
    from proxy.upstream.selector import Upstreams

    return Upstreams(5.0, demo=DemoUpstream(latency_s=0.0, chunk_delay_s=0.0))


async def test_redis_killed_then_restarted(
    make_client: Any, redis_process: RedisProcess, fast_demo: Any
) -> None:
    client = await make_client(upstreams=fast_demo, url=redis_process.url, redis={"retry_after_ms": 200})
    assert (await client.post(CHAT, json=DEMO, headers=auth())).headers["x-cache"] == "MISS"
    assert (await client.post(CHAT, json=DEMO, headers=auth())).headers["x-cache"] == "HIT"

    redis_process.stop()
    for stream in (False, True, False):
        down = await client.post(CHAT, json={**DEMO, "stream": stream}, headers=auth())
        assert down.status_code == 200
        assert down.headers["x-cache"] == "BYPASS"
    assert (await client.get("/readyz")).status_code == 503

    # While the breaker is open a request does not wait for Redis at all.
    started = time.perf_counter()
    await client.post(CHAT, json=DEMO, headers=auth())
    assert time.perf_counter() - started < 0.2

    redis_process.start()
    await asyncio.sleep(0.3)  # past retry_after_ms: the next request probes Redis
    statuses = [(await client.post(CHAT, json=DEMO, headers=auth())).headers["x-cache"] for _ in range(3)]
    assert statuses == ["MISS", "HIT", "HIT"]
    assert (await client.get("/readyz")).status_code == 200


async def test_redis_unreachable_from_the_start(make_client: Any, fast_demo: Any) -> None:
    client = await make_client(upstreams=fast_demo, url=f"redis://127.0.0.1:{free_port()}/0")
    response = await client.post(CHAT, json=DEMO, headers=auth())
    assert response.status_code == 200
    assert response.headers["x-cache"] == "BYPASS"
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 503


async def test_stats_without_redis_is_a_503_not_a_crash(make_client: Any, fast_demo: Any) -> None:
    """Starlette re-raises what reaches its catch-all handler after answering (uvicorn then
    logs an ASGI crash, and the test client raises it): Redis down has a handler of its own."""
    client = await make_client(upstreams=fast_demo, url=f"redis://127.0.0.1:{free_port()}/0")
    for path in ("/stats", "/metrics", "/stats/events"):
        response = await client.get(path, headers=auth("admin"))
        assert response.status_code == 503, (path, response.text)
        assert (
            response.json()["error"]["message"]
            == "The cache store (Redis) is unavailable; try again shortly."
        )
        assert "127.0.0.1" not in response.text


async def test_slow_redis_is_bounded_by_the_timeout(
    make_client: Any, redis_process: RedisProcess, fast_demo: Any
) -> None:
    import redis as sync_redis

    client = await make_client(upstreams=fast_demo, url=redis_process.url, redis={"timeout_ms": 100})
    blocker = sync_redis.Redis.from_url(redis_process.url)
    loop = asyncio.get_running_loop()
    sleeping = loop.run_in_executor(None, lambda: blocker.execute_command("DEBUG", "SLEEP", "1.5"))
    await asyncio.sleep(0.1)
    started = time.perf_counter()
    response = await client.post(
        CHAT, json={**DEMO, "messages": [{"role": "user", "content": "slow"}]}, headers=auth()
    )
    elapsed = time.perf_counter() - started
    await sleeping
    blocker.close()
    assert response.status_code == 200
    assert response.headers["x-cache"] == "BYPASS"
    assert elapsed < 1.0
