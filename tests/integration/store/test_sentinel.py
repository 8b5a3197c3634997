"""Redis Sentinel: the proxy finds the primary through a real sentinel and follows a
failover by itself (the primary is killed; the sentinel promotes the replica)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.upstream.demo import DemoUpstream
from proxy.upstream.selector import Upstreams
from tests.conftest import auth
from tests.servers import RedisSentinelSetup

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[RedisSentinelSetup]:
    setup = RedisSentinelSetup(tmp_path).start()
    yield setup
    setup.stop()


def ask(content: str) -> dict[str, Any]:
    return {"model": "demo", "messages": [{"role": "user", "content": content}]}


async def test_the_proxy_follows_a_sentinel_failover(make_client: Any, sentinel: RedisSentinelSetup) -> None:
    client = await make_client(
        url=sentinel.url,
        upstreams=Upstreams(5, demo=DemoUpstream(latency_s=0)),
        redis={"retry_after_ms": 200, "timeout_ms": 300},
    )
    assert (await client.post(CHAT, json=ask("before"), headers=auth())).headers["x-cache"] == "MISS"
    assert (await client.post(CHAT, json=ask("before"), headers=auth())).headers["x-cache"] == "HIT"
    await asyncio.sleep(0.5)  # let the replica catch up
    old = sentinel.primary_port()
    sentinel.primary.stop()  # SIGKILL

    statuses, seen = [], []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = await client.post(CHAT, json=ask("before"), headers=auth())
        statuses.append(response.status_code)
        seen.append(response.headers["x-cache"])
        if seen[-1] == "HIT" and sentinel.primary_port() != old:
            break
        await asyncio.sleep(0.2)
    assert set(statuses) == {200}  # served throughout, from the provider while Redis was away
    assert "BYPASS" in seen and seen[-1] == "HIT", seen  # the replicated answer, on the new primary
    assert sentinel.primary_port() == sentinel.replica.port
    assert (await client.post(CHAT, json=ask("after"), headers=auth())).headers["x-cache"] == "MISS"
    assert (await client.post(CHAT, json=ask("after"), headers=auth())).headers["x-cache"] == "HIT"
