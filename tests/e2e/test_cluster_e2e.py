"""A real 3-primary Redis Cluster (started here from redis-server binaries) behind two proxy
workers: answers, limits, single flight, the review queue, stats and a purge that reaches
every node. (CI also runs the whole integration suite against a cluster:
`LLMCP_TEST_CLUSTER=1 pytest tests/integration`.)"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.conftest import ADMIN_KEY, TENANT_KEYS, sync_client
from tests.e2e.stack import Stack, start_stack, stop_stack
from tests.servers import RedisClusterProcesses

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    nodes = RedisClusterProcesses(tmp_path_factory.mktemp("cluster")).start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def cluster_client(cluster: RedisClusterProcesses) -> Iterator[redis.Redis]:
    client = sync_client(cluster.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, cluster: RedisClusterProcesses, cluster_client: redis.Redis
) -> Iterator[Stack]:
    tenants = [
        {"name": "acme", "api_keys": [TENANT_KEYS["acme"]]},
        {
            "name": "globex",
            "api_keys": [TENANT_KEYS["globex"]],
            "limits": {"requests_per_minute": 1, "burst_requests": 5},
        },
    ]
    stack = start_stack(
        tmp_path_factory.mktemp("e2e-cluster"),
        cluster.url,
        workers=2,
        admin={"api_keys": [ADMIN_KEY]},
        stats={"flush_interval_ms": 50},
        tenants=tenants,
    )
    yield stack
    stop_stack(stack, cluster_client)


def nodes_holding(cluster: RedisClusterProcesses, pattern: str) -> dict[int, int]:
    """How many keys matching `pattern` each node holds."""
    counts = {}
    for node in cluster.nodes:
        client = redis.Redis(host="127.0.0.1", port=node.port)
        counts[node.port] = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
        client.close()
    return counts


def chat(stack: Stack, prompt: str) -> Any:
    return stack.client().chat.completions.with_raw_response.create(
        model="fake", messages=[{"role": "user", "content": prompt}]
    )


def test_answers_spread_over_every_node_and_purge_reaches_them_all(
    stack: Stack, cluster: RedisClusterProcesses
) -> None:
    prompts = [f"cluster {uuid.uuid4()}" for _ in range(30)]
    assert {chat(stack, p).headers["x-cache"] for p in prompts} == {"MISS"}
    assert {chat(stack, p).headers["x-cache"] for p in prompts} == {"HIT"}
    spread = nodes_holding(cluster, f"{stack.prefix}:v1:acme:chat:*")
    assert sum(spread.values()) == 30 and all(n > 0 for n in spread.values()), spread
    purged = httpx.delete(f"{stack.base_url[:-3]}/admin/cache?tenant=acme", headers=ADMIN)
    assert purged.status_code == 200 and purged.json()["deleted"] == 30
    assert sum(nodes_holding(cluster, f"{stack.prefix}:v1:acme:*:*").values()) == 0


def test_limits_single_flight_and_review_work_on_the_cluster(stack: Stack) -> None:
    globex = stack.client("globex")
    outcomes = Counter()
    for i in range(8):
        try:
            globex.chat.completions.create(model="demo", messages=[{"role": "user", "content": f"l{i}"}])
            outcomes["ok"] += 1
        except openai.RateLimitError:
            outcomes["limited"] += 1
    assert outcomes == {"ok": 5, "limited": 3}

    stack.upstream_mode(latency_ms=500)
    before = stack.upstream_calls()
    prompt = f"herd {uuid.uuid4()}"

    def ask(_: int) -> str:
        return chat(stack, prompt).parse().choices[0].message.content or ""

    with ThreadPoolExecutor(20) as pool:
        answers = set(pool.map(ask, range(20)))
    stack.upstream_mode(latency_ms=0)
    assert len(answers) == 1 and stack.upstream_calls() - before == 1

    raw = stack.client().chat.completions.with_raw_response.create(
        model="fake", messages=[{"role": "user", "content": prompt}]
    )
    digest = raw.headers["x-cache-key"]
    acme = {"Authorization": f"Bearer {TENANT_KEYS['acme']}"}
    assert httpx.post(f"{stack.base_url}/cache/flags", json={"key": digest}, headers=acme).status_code == 201
    again = stack.client().chat.completions.with_raw_response.create(
        model="fake", messages=[{"role": "user", "content": prompt}]
    )
    assert again.headers["x-cache"] == "MISS"
    listing = httpx.get(f"{stack.base_url[:-3]}/admin/review?tenant=acme", headers=ADMIN).json()
    assert [i["id"] for i in listing["data"]] == [digest]

    stats = httpx.get(f"{stack.base_url[:-3]}/stats", headers=ADMIN).json()
    assert stats["windows"]["all"]["tenants"]["globex"]["totals"]["rate_limited"]["requests"] == 3


def test_embeddings_items_in_many_slots(stack: Stack) -> None:
    client = stack.client()
    texts = [f"embed {uuid.uuid4()}" for _ in range(20)]
    first = client.embeddings.with_raw_response.create(model="fake", input=texts[:10])
    assert first.headers["x-cache"] == "MISS"
    both = client.embeddings.with_raw_response.create(model="fake", input=texts)
    assert both.headers["x-cache"] == "PARTIAL" and both.headers["x-cache-hits"] == "10/20"
    assert [d.embedding for d in both.parse().data[:10]] == [d.embedding for d in first.parse().data]
