"""The streaming leader's chunk sharing, on a real Redis: never in front of the client,
batched, in order, and all written before the followers hear "done"."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from proxy.errors import StoreUnavailable
from proxy.store.connection import RedisGate, connect
from proxy.store.flight import SingleFlight
from tests.conftest import build_config

pytestmark = pytest.mark.anyio
T = TypeVar("T")


class HeldGate(RedisGate):
    """A gate whose calls wait until the test opens it, and which counts them."""

    def __init__(self, inner: RedisGate) -> None:
        super().__init__(inner.client, retry_after_ms=0)
        self.open = asyncio.Event()
        self.calls = 0

    async def run(self, call: Callable[[Any], Awaitable[T]], timeout_s: float | None = None) -> T:
        self.calls += 1
        await self.open.wait()
        return await super().run(call, timeout_s)


async def test_chunks_are_shared_without_waiting_batched_in_order(redis_url: str, key_prefix: str) -> None:
    config = build_config(key_prefix)
    gate = RedisGate(connect(redis_url, config.redis), retry_after_ms=0)
    flights = SingleFlight(gate, config)
    held = HeldGate(gate)
    leading = SingleFlight(held, config)
    held.open.set()
    leader = await leading.join("acme", "d" * 64, streaming=True)
    follower = await flights.join("acme", "d" * 64, streaming=True)
    assert leader.leader and not follower.leader
    held.open.clear()  # Redis answers nothing from here until the test says so
    before = held.calls

    # The leader's client is never held up by Redis: sharing returns at once, with Redis stuck.
    for i in range(20):
        leading.share(leader, {"i": i})
    await asyncio.sleep(0)  # the writer task starts and waits on Redis with the first chunk
    for i in range(20, 50):
        leading.share(leader, {"i": i})

    held.open.set()
    await leading.finish(leader, ok=True)
    got = [chunk["i"] async for chunk in flights.follow_stream(follower, timeout_s=10)]
    assert got == list(range(50))  # every chunk, in order, before the end mark
    # Round trips for 50 chunks: the first batch, the rest in one, then the release.
    assert held.calls - before <= 3
    await flights.close()
    await leading.close()
    await gate.aclose()


@pytest.mark.parametrize("ok", [False, True])
async def test_a_leader_that_ends_before_its_first_chunk_ends_its_followers_stream(
    redis_url: str, key_prefix: str, ok: bool
) -> None:
    """A streaming leader that fails before its first chunk (an upstream error, a timeout)
    wrote no stream. Its streaming followers wait in XREAD BLOCK on that stream, not on the
    channel: the release writes the end entry anyway, so they learn the outcome from it at
    once. Without it they would wake only when lock_ms (a minute here) had passed, to find
    the lock gone ("went away"), which this test rules out."""
    config = build_config(key_prefix, single_flight={"lock_ms": 60_000})
    gate = RedisGate(connect(redis_url, config.redis), retry_after_ms=0)
    flights = SingleFlight(gate, config)
    leader = await flights.join("acme", "e" * 64, streaming=True)
    follower = await flights.join("acme", "e" * 64, streaming=True)
    assert leader.leader and not follower.leader and follower.streaming_leader

    async def follow() -> list[Any]:
        return [chunk async for chunk in flights.follow_stream(follower, timeout_s=120)]

    early = asyncio.create_task(follow())  # reading (or about to) before the leader ends
    await asyncio.sleep(0)
    await flights.finish(leader, ok=ok)
    for following in (early, asyncio.create_task(follow())):  # and one that reads after the end
        if ok:  # "done": the answer is in the cache, nothing was streamed to relay
            assert await following == []
        else:
            with pytest.raises(StoreUnavailable, match="the single-flight leader failed"):
                await following
    assert 0 < await gate.run(lambda r: r.pttl(follower.chunks_key)) <= 30_000  # lingers, then goes
    await flights.close()
    await gate.aclose()


async def test_a_follower_whose_leader_ended_before_it_listened_is_not_kept_waiting(
    redis_url: str, key_prefix: str
) -> None:
    """The leader ends (and publishes) between the follower's join and its registration for
    the message: the follower must not sit until its next lock check (half of lock_ms: 30 s
    here); the 10 s bound below is a hang detector, far from either outcome."""
    config = build_config(key_prefix, single_flight={"lock_ms": 60_000})
    gate = RedisGate(connect(redis_url, config.redis), retry_after_ms=0)
    flights = SingleFlight(gate, config)
    leader = await flights.join("acme", "f" * 64, streaming=False)
    follower = await flights.join("acme", "f" * 64, streaming=False)
    assert leader.leader and not follower.leader
    await flights.finish(leader, ok=True)
    assert await asyncio.wait_for(flights.wait(follower, timeout_s=120), 10) in ("done", "gone")
    await flights.close()
    await gate.aclose()


async def test_flight_tokens_are_a_process_prefix_and_a_counter(redis_url: str, key_prefix: str) -> None:
    """Unique per flight, and cheap: one random prefix per process, then a counter (a
    generator that called os.urandom for every token cost a tenth of a cache hit)."""
    config = build_config(key_prefix)
    gate = RedisGate(connect(redis_url, config.redis), retry_after_ms=0)
    flights = SingleFlight(gate, config)
    first = await flights.join("acme", "e" * 64, streaming=False)
    second = await flights.join("acme", "f" * 64, streaming=True)
    assert first.leader and second.leader
    assert first.token != second.token
    assert first.token[:12] == second.token[:12]  # the process's prefix (6 random bytes, hex)
    assert first.token.endswith(":n") and second.token.endswith(":s")
    for flight in (first, second):
        await flights.finish(flight, ok=False)
    await flights.close()
    await gate.aclose()


async def test_a_leader_keeps_its_lock_while_it_works_and_lets_it_lapse_once_settled(
    redis_url: str, key_prefix: str, redis_sync: Any
) -> None:
    """The heartbeat renews the lock every lock_ms/3: a leader working past lock_ms keeps
    it (its followers keep waiting); once settled nothing renews it, and a leader that
    died without releasing frees its followers within lock_ms."""
    config = build_config(key_prefix, single_flight={"enabled": True, "lock_ms": 300, "wait_ms": 5000})
    gate = RedisGate(connect(redis_url, config.redis), retry_after_ms=0)
    flights = SingleFlight(gate, config)
    leader = await flights.join("acme", "a" * 64, streaming=False)
    assert leader.leader
    await asyncio.sleep(0.9)  # three lock_ms: only renewals keep it
    assert redis_sync.exists(leader.lock) == 1
    await flights.settle(leader)  # as before a release; here the leader then dies
    await asyncio.sleep(0.6)
    assert redis_sync.exists(leader.lock) == 0
    await flights.close()
    await gate.aclose()
