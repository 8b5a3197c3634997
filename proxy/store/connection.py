"""The Redis connection: bounded timeouts, and a breaker that stops paying them.

Every Redis call the proxy makes goes through `RedisGate.run`, which turns any Redis or
socket failure into `StoreUnavailable` (the caller degrades: cache BYPASS, limiter open or
closed). After a failure the gate stays shut for `retry_after_ms`, so while Redis is down
requests skip it at once instead of each waiting for a connect timeout; the first request
after that probes it, and the proxy recovers by itself when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.config import RedisConfig
from proxy.errors import StoreUnavailable
from proxy.store.lane import Command, PipelinedConnection

log = logging.getLogger("llmcp.redis")
T = TypeVar("T")

# RedisClusterException: the cluster client's own failures (no reachable node, slots
# not covered); it is not a RedisError.
FAILURES = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)


def script(client: Any, name: str) -> Any:
    """`proxy/store/lua/<name>` registered on the client: EVALSHA, reloaded on NOSCRIPT.
    A line `--@include <file>` is replaced by that file (code two scripts share)."""
    return client.register_script(lua_source(name))


def lua_source(name: str) -> str:
    lua = files("proxy.store").joinpath("lua")
    lines = lua.joinpath(name).read_text(encoding="utf-8").splitlines()
    return "\n".join(
        lua.joinpath(line.removeprefix("--@include ").strip()).read_text(encoding="utf-8")
        if line.startswith("--@include ")
        else line
        for line in lines
    )


def is_cluster_url(url: str) -> bool:
    return "," in url and not is_sentinel_url(url)


def is_sentinel_url(url: str) -> bool:
    """`redis+sentinel://s1:26379,s2:26379/<master name>[/<db>]`."""
    return url.startswith("redis+sentinel://")


def connect(url: str, cfg: RedisConfig, per_read_timeout: bool = False) -> aioredis.Redis:
    """A client with bounded connects. Reads are bounded by the `RedisGate` around each call
    (`asyncio.timeout`, `redis.timeout_ms`), not by redis-py's socket timeout, which wraps
    every write in `asyncio.wait_for` (a task per command: a fifth of the CPU of a Redis
    round trip here); `per_read_timeout` keeps redis-py's per-read bound instead, for the
    CLI's long imports and scans, whose gate sets no total. The plain pool (not BlockingConnectionPool, whose
    per-checkout condition wait costs ~5% of a hit): past max_connections a call fails at
    once with "Too many connections", which bypasses the cache for that request only.
    For Redis Cluster (`redis.cluster`, or several nodes in the url): redis-py's cluster
    client, which routes each command by its key's slot and follows MOVED/ASK."""
    read_timeout_s = cfg.timeout_ms / 1000 if per_read_timeout else None
    if is_sentinel_url(url):
        return _sentinel_master(url, cfg.max_connections, read_timeout_s, cfg.connect_timeout_ms / 1000)
    if cfg.cluster or is_cluster_url(url):
        return _cluster(url, cfg.max_connections, read_timeout_s, cfg.connect_timeout_ms / 1000)
    pool = aioredis.ConnectionPool.from_url(
        url,
        max_connections=cfg.max_connections,
        socket_timeout=read_timeout_s,
        socket_connect_timeout=cfg.connect_timeout_ms / 1000,
        health_check_interval=30,
        # No retries: a failure opens the breaker instead; retrying only multiplies timeouts.
        retry=Retry(NoBackoff(), 0),
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections


def lane_for(url: str, cfg: RedisConfig) -> PipelinedConnection | None:
    """The pipelined lane beside `connect`'s client, for a plain single server only: with
    `redis.cluster` (even on a one-node url), Sentinel or several nodes, keys live where
    redis-py's routing finds them, so every call stays on the client."""
    if cfg.cluster or is_cluster_url(url) or is_sentinel_url(url):
        return None
    return PipelinedConnection.for_url(url, cfg.connect_timeout_ms / 1000, cfg.timeout_ms / 1000)


def _cluster(url: str, max_connections: int, timeout_s: float | None, connect_s: float) -> Any:
    nodes = []
    for part in url.split(","):
        part = part.strip()
        parsed = urlsplit(part if "://" in part else f"redis://{part}")
        nodes.append(ClusterNode(parsed.hostname or "127.0.0.1", parsed.port or 6379))
    first = urlsplit(url.split(",")[0])
    return RedisCluster(
        startup_nodes=nodes,
        username=first.username,
        password=first.password,
        ssl=first.scheme == "rediss",
        max_connections=max_connections,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_s,
        # One retry follows a failover's new topology; more only multiply timeouts.
        retry=Retry(NoBackoff(), 1),
    )


def _sentinel_master(
    url: str, max_connections: int, timeout_s: float | None, connect_s: float
) -> aioredis.Redis:
    """The current primary, as the sentinels name it. A failover breaks the open connections
    (the breaker opens); new ones ask the sentinels again and reach the promoted replica."""
    parts = urlsplit(url)
    name, _, db = parts.path.strip("/").partition("/")
    nodes = []
    for node in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = node.partition(":")
        nodes.append((host or "127.0.0.1", int(port or 26379)))
    sentinel = Sentinel(nodes, socket_timeout=connect_s, socket_connect_timeout=connect_s)
    master: aioredis.Redis = sentinel.master_for(
        name,
        db=int(db or 0),
        password=parts.password,
        username=parts.username,
        max_connections=max_connections,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_s,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )
    return master


def node_reader(
    cluster: Any, key: str, read_timeout_s: float, readers: dict[str, aioredis.Redis]
) -> aioredis.Redis:
    """A plain client to the cluster node that holds `key`, for blocking reads (XREAD
    BLOCK): the cluster client's connection handling races under many concurrent blocking
    reads. Cached per node in `readers`; a resharding just makes the read fail over."""
    node = cluster.get_node_from_key(key)
    reader = readers.get(node.name)
    if reader is None:
        kwargs = cluster.get_connection_kwargs()
        reader = aioredis.Redis(
            host=node.host,
            port=node.port,
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            socket_timeout=read_timeout_s,
            socket_connect_timeout=kwargs.get("socket_connect_timeout") or 5.0,
        )
        readers[node.name] = reader
    return reader


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def blocking_client(
    client: aioredis.Redis, read_timeout_s: float | None, max_connections: int
) -> aioredis.Redis:
    """A second client to the same server for blocking reads (XREAD BLOCK, pub/sub): the
    hot path's short socket timeout would cut those off and open the breaker for everyone."""
    if is_cluster(client):
        cluster: Any = client
        nodes = cluster.get_nodes() or cluster.nodes_manager.startup_nodes.values()
        url = ",".join(f"{n.host}:{n.port}" for n in nodes)
        connect_s = cluster.get_connection_kwargs().get("socket_connect_timeout") or 5.0
        routed: aioredis.Redis = _cluster(url, max_connections, read_timeout_s, connect_s)
        return routed
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        kwargs = {
            **pool.connection_kwargs,
            "socket_timeout": read_timeout_s,
            "max_connections": max_connections,
        }
        sentinel_pool = SentinelConnectionPool(pool.service_name, pool.sentinel_manager, **kwargs)
        return aioredis.Redis.from_pool(sentinel_pool)
    kwargs = {**pool.connection_kwargs, "socket_timeout": read_timeout_s}
    blocking = aioredis.ConnectionPool(
        connection_class=pool.connection_class, max_connections=max_connections, **kwargs
    )
    return aioredis.Redis.from_pool(blocking)


async def pubsub(client: Any) -> Any:
    """A pub/sub object. On a cluster, classic PUBLISH reaches every node, so one
    subscription on any node hears it; the cluster client must know its slots first."""
    if is_cluster(client):
        await client.initialize()
    return client.pubsub(ignore_subscribe_messages=True)


def _is_pool_exhausted(exc: BaseException) -> bool:
    return isinstance(exc, RedisConnectionError) and "Too many connections" in str(exc)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, RedisTimeoutError | asyncio.TimeoutError)


def _opens_breaker(exc: BaseException, timeouts_in_a_row: int, threshold: int) -> bool:
    """Down (refused, reset): open now. Slow: open after `threshold` timeouts in a row.
    Busy (our own pool is full): never."""
    if _is_pool_exhausted(exc):
        return False
    if _is_timeout(exc):
        return timeouts_in_a_row >= threshold
    return True


class RedisGate:
    """Runs Redis calls; remembers failure for a moment so the next calls fail fast."""

    def __init__(
        self,
        client: aioredis.Redis,
        retry_after_ms: int,
        breaker_failures: int = 3,
        timeout_s: float | None = None,
        lane: PipelinedConnection | None = None,
    ) -> None:
        """`timeout_s` bounds each call as a whole (the server's gate: `redis.timeout_ms`);
        None leaves the bounds to the client's own socket timeouts (the CLI's). `lane`, when
        given, carries `command`, `commands` and `script` (the hot path's calls)."""
        self.client = client
        self._timeout = timeout_s
        self._lane = lane
        self._retry_after = retry_after_ms / 1000
        self._threshold = breaker_failures
        self._timeouts_in_a_row = 0
        self._down_until = 0.0
        self._down_since: float | None = None

    async def run(self, call: Callable[[aioredis.Redis], Awaitable[T]], timeout_s: float | None = None) -> T:
        """Run one call; `timeout_s` overrides the per-call ceiling (admin scans take longer).
        A call cut off by the ceiling is cancelled inside redis-py, which then drops that
        connection (a reply may still be on its way)."""
        # None for the CLI's client: connect, pool wait and every read have their own timeouts.
        limit = self._timeout if timeout_s is None else timeout_s
        return await self._guarded(lambda: call(self.client), limit)

    async def _guarded(self, call: Callable[[], Awaitable[T]], limit: float | None = None) -> T:
        """`call` through the breaker: refused at once while it is open; a failure becomes
        StoreUnavailable (and counts); `limit` bounds it (lane calls bound themselves)."""
        if self._down_since is not None and time.monotonic() < self._down_until:
            raise StoreUnavailable("Redis is unavailable (circuit open)")
        try:
            if limit is None:
                result = await call()
            else:
                async with asyncio.timeout(limit):
                    result = await call()
        except FAILURES as exc:
            if _opens_breaker(exc, self._timeouts_in_a_row + 1, self._threshold):
                self._failed(exc)
            elif _is_timeout(exc):
                self._timeouts_in_a_row += 1
            raise StoreUnavailable(f"Redis call failed: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # Not a Redis error class, but from inside the client (seen: redis-py's cluster
            # client racing a reconnect, AttributeError). It degrades like one, loudly.
            log.error("unexpected error from the Redis client; degrading", exc_info=exc)
            raise StoreUnavailable(f"Redis call failed: {type(exc).__name__}: {exc}") from exc
        self._timeouts_in_a_row = 0
        if self._down_since is not None:
            log.warning("Redis is reachable again after %.1fs", time.monotonic() - self._down_since)
            self._down_since = None
        return result

    async def command(self, *command: Any) -> Any:
        """One command, on the pipelined lane when there is one (`run`'s guarantees)."""
        lane = self._lane
        if lane is None:
            return await self.run(lambda r: r.execute_command(*command))
        return await self._guarded(lambda: lane.execute(*command, timeout_s=self._timeout))

    async def commands(self, commands: list[Command]) -> list[Any]:
        """Several commands in one round trip (not a transaction), their replies in order."""
        lane = self._lane
        if lane is not None:
            return await self._guarded(lambda: lane.execute_many(commands, self._timeout))

        async def pipelined(r: aioredis.Redis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())

        return await self.run(pipelined)

    async def script(self, lua: Any, keys: list[str], args: list[Any]) -> Any:
        """A registered script (`script()`) by EVALSHA, loaded first if Redis lost it."""
        lane = self._lane
        if lane is None:
            return await self.run(lambda r: lua(keys=keys, args=args, client=r))

        timeout = self._timeout

        async def evalsha() -> Any:
            command = ("EVALSHA", lua.sha, len(keys), *keys, *args)
            try:
                return await lane.execute(*command, timeout_s=timeout)
            except NoScriptError:
                async with asyncio.timeout(timeout):
                    await self.client.script_load(lua.script)
                return await lane.execute(*command, timeout_s=timeout)

        return await self._guarded(evalsha)

    def _failed(self, exc: BaseException) -> None:
        self._timeouts_in_a_row = 0
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "Redis failed (%s: %s); serving without cache, retrying every %.1fs",
                type(exc).__name__,
                exc,
                self._retry_after,
            )
        self._down_until = now + self._retry_after

    async def aclose(self) -> None:
        """Close the client, its pool and the lane (shutdown)."""
        if self._lane is not None:
            await self._lane.aclose()
        await self.client.aclose()

    async def ping(self) -> bool:
        """Readiness: reach Redis now, ignoring the breaker (it is a probe too)."""
        self._down_until = 0.0
        try:
            await self.run(lambda r: r.ping())
        except StoreUnavailable:
            return False
        return True
