"""The pipelined connection (proxy/store/lane.py) against a real redis-server it can stop
and restart, on both event loops the proxy runs on (asyncio in tests, uvloop in serve)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.config import RedisConfig
from proxy.errors import StoreUnavailable
from proxy.store.connection import RedisGate, connect, script
from proxy.store.connection import lane_for as server_lane
from proxy.store.lane import PipelinedConnection, pack
from tests.servers import RedisProcess

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    process = RedisProcess().start()
    yield process
    process.stop()


def run(loop: str, work: Callable[[], Awaitable[Any]]) -> Any:
    if loop == "uvloop":
        return uvloop.run(work())
    return asyncio.run(work())


def stall(server: RedisProcess, seconds: float) -> None:
    """The server answers nothing for `seconds` (DEBUG SLEEP, sent from a thread)."""
    sleeper = redis.Redis.from_url(server.url)
    threading.Thread(target=lambda: sleeper.execute_command("DEBUG", "SLEEP", seconds), daemon=True).start()


def lane_for(url: str, stall_s: float = 0.5) -> PipelinedConnection:
    lane = PipelinedConnection.for_url(url, 1.0, stall_s)
    assert lane is not None
    return lane


def test_only_plain_servers_get_a_lane() -> None:
    assert PipelinedConnection.for_url("redis://127.0.0.1:6379/3", 1, 1) is not None
    assert PipelinedConnection.for_url("unix:///tmp/r.sock?db=2", 1, 1) is not None
    assert PipelinedConnection.for_url("rediss://127.0.0.1:6379/0", 1, 1) is None
    assert PipelinedConnection.for_url("redis://a:1,b:2", 1, 1) is None
    assert PipelinedConnection.for_url("redis+sentinel://s:26379/mymaster", 1, 1) is None
    assert PipelinedConnection.for_url("redis://h:6379/0?ssl_cert_reqs=none", 1, 1) is None
    # `redis.cluster: true` on a one-node url: the cluster client routes, never the lane.
    assert server_lane("redis://127.0.0.1:7000/0", RedisConfig(cluster=True)) is None
    assert server_lane("redis://127.0.0.1:6379/0", RedisConfig()) is not None


def test_arguments_are_encoded_as_redis_py_encodes_them() -> None:
    assert pack(("SET", "k", b"v\r\n", 7, 1.5)) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$1\r\n7\r\n$3\r\n1.5\r\n"
    )
    with pytest.raises(redis.DataError):
        pack(("SET", "k", True))


@pytest.mark.parametrize("loop", LOOPS)
def test_concurrent_commands_get_their_own_replies(loop: str, server: RedisProcess) -> None:
    async def work() -> None:
        lane = lane_for(server.url.replace("/0", "/5"))  # SELECT on connect
        try:
            await asyncio.gather(*(lane.execute("SET", f"k{i}", f"v{i}") for i in range(200)))
            got = await asyncio.gather(*(lane.execute("GET", f"k{i}") for i in range(200)))
            assert got == [f"v{i}".encode() for i in range(200)]
            replies = await lane.execute_many([("GET", "k1"), ("PTTL", "k1"), ("GET", "none")])
            assert replies == [b"v1", -1, None]
            with pytest.raises(ResponseError):
                await lane.execute("INCR", "k1")  # an error reply raises, the lane carries on
            assert await lane.execute("GET", "k2") == b"v2"
        finally:
            await lane.aclose()
        assert redis.Redis.from_url(server.url.replace("/0", "/5")).get("k3") == b"v3"

    run(loop, work)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_password_is_sent_first(loop: str) -> None:
    server = RedisProcess().start("--requirepass", "s3cret")
    try:

        async def work() -> None:
            lane = lane_for(server.url.replace("redis://", "redis://:s3cret@"))
            assert await lane.execute("PING") == b"PONG"
            await lane.aclose()
            wrong = lane_for(server.url.replace("redis://", "redis://:nope@"))
            with pytest.raises(RedisConnectionError):
                await wrong.execute("PING")
            await wrong.aclose()

        run(loop, work)
    finally:
        server.stop()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_stalled_server_fails_owed_calls_as_timeouts_then_reconnects(
    loop: str, server: RedisProcess
) -> None:
    async def work() -> None:
        lane = lane_for(server.url, stall_s=0.2)
        assert await lane.execute("PING") == b"PONG"
        stall(server, 1.5)
        await asyncio.sleep(0.1)
        owed = asyncio.ensure_future(lane.execute("GET", "x"))  # waits behind the sleep
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await lane.execute("GET", "y")  # cut off after nothing came back for 0.3 s
        with pytest.raises(RedisTimeoutError):
            await owed  # dropped with the stalled connection, as a timeout
        await asyncio.sleep(1.5)
        assert await lane.execute("PING") == b"PONG"  # a new connection
        await lane.aclose()

    run(loop, work)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_call_s_own_deadline_fails_it_as_a_timeout_and_its_late_reply_is_dropped(
    loop: str, server: RedisProcess
) -> None:
    async def work() -> None:
        lane = lane_for(server.url, stall_s=5.0)  # a stall would drop the connection: not here
        assert await lane.execute("SET", "k", "v", timeout_s=1.0) == b"OK"
        connection = lane._protocol
        stall(server, 0.5)
        await asyncio.sleep(0.1)
        with pytest.raises(RedisTimeoutError):
            await lane.execute("GET", "k", timeout_s=0.1)  # behind the sleep
        # The same connection: the late reply to the GET is dropped, not given to the next call.
        assert await lane.execute_many([("GET", "k"), ("PING",)], 2.0) == [b"v", b"PONG"]
        assert lane._protocol is connection
        await lane.aclose()

    run(loop, work)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_reply_that_came_while_the_loop_itself_was_stalled_is_not_a_timeout(
    loop: str, server: RedisProcess
) -> None:
    """The loop blocked past a call's deadline (another thread holding the GIL, say) while
    the reply arrived: the call gets its reply (uvloop runs due timers before it reads)."""

    async def work() -> None:
        lane = lane_for(server.url)
        assert await lane.execute("SET", "k", "v") == b"OK"
        # The stall comes from a socket's callback, as a request's work would: after it the
        # loop's next turn starts with its due timers.
        near, far = socket.socketpair()
        asyncio.get_running_loop().add_reader(near, lambda: (near.recv(1), time.sleep(0.3)))
        call = asyncio.ensure_future(lane.execute("GET", "k", timeout_s=0.05))
        for _ in range(3):
            await asyncio.sleep(0)  # the call is written
        far.send(b"x")  # the whole loop stalls past the deadline; Redis answers meanwhile
        try:
            assert await call == b"v"
        finally:
            asyncio.get_running_loop().remove_reader(near)
            near.close()
            far.close()
            await lane.aclose()

    run(loop, work)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_restarted_server_is_reached_again(loop: str, server: RedisProcess) -> None:
    async def work() -> None:
        lane = lane_for(server.url)
        assert await lane.execute("SET", "a", "1") == b"OK"
        server.stop()
        with pytest.raises(RedisConnectionError):
            await lane.execute("GET", "a")
        server.start()
        deadline = time.monotonic() + 5
        while True:
            try:
                assert await lane.execute("GET", "a") is None  # a fresh, empty server
                break
            except RedisConnectionError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        await lane.aclose()

    run(loop, work)


@pytest.mark.parametrize("loop", LOOPS)
def test_the_gate_runs_scripts_on_the_lane_and_loads_them_when_redis_lost_them(
    loop: str, server: RedisProcess
) -> None:
    async def work() -> None:
        cfg = RedisConfig()
        client = connect(server.url, cfg)
        gate = RedisGate(client, retry_after_ms=0, timeout_s=0.5, lane=lane_for(server.url))
        lua = script(client, "flight_acquire.lua")
        with pytest.raises(NoScriptError):
            await gate._lane.execute("EVALSHA", lua.sha, 1, "lock", "t", 1000)  # type: ignore[union-attr]
        assert await gate.script(lua, ["lock"], ["tok:n", 1000]) == [1, b"tok:n"]
        assert await gate.script(lua, ["lock"], ["other:n", 1000]) == [0, b"tok:n"]
        assert await gate.command("PTTL", "lock") > 0
        assert await gate.commands([("GET", "lock"), ("EXISTS", "lock")]) == [b"tok:n", 1]
        await client.script_flush()
        assert await gate.script(lua, ["lock2"], ["tok:n", 1000]) == [1, b"tok:n"]
        server.stop()
        with pytest.raises(StoreUnavailable):
            await gate.command("GET", "lock")
        await gate.aclose()

    run(loop, work)
