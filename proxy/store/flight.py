"""Single flight: when identical requests miss at once, one goes upstream.

Across every process sharing the Redis: the first request takes the flight lock
(`SET NX PX`, in flight_acquire.lua) and becomes the leader; the others follow. The
leader refreshes its lock while it works, and when it is done releases it and publishes
"done" (the answer is now cached) or "failed" (flight_release.lua). Followers wait on one
shared pattern subscription per process (no connection per waiter, no polling); a
follower that hears nothing checks now and then that the lock still exists, so a crashed
leader is noticed within `lock_ms`. A streaming leader also appends each chunk to a
short-lived Redis Stream that streaming followers read live with XREAD BLOCK. It never
waits for that in front of its client: `share` queues the chunk and returns; one writer
task per flight writes what has queued, a batch per round trip, in order, and `finish`
waits for it before waking the followers. The release ends that stream with an `end`
entry ("done" | "failed"), even when no chunk came before it: streaming followers of a
leader that failed before its first chunk learn it at once, not after `lock_ms`.

    <prefix>:v1:<ns>:flight:{<digest>}          string, the lock (token), PX lock_ms
    <prefix>:v1:<ns>:flight:{<digest>}:<leader>:chunks   stream of the leader's chunks, then end, TTL
    channel <prefix>:v1:<ns>:flight:{<digest>}  "done" | "failed"

The lock shares the cache entry's `{<digest>}` hash tag, so one script can look at the
entry and take the lock (`join` with the entry's key: the recheck of a request that just
missed costs no round trip of its own) on Redis Cluster too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.config import Config
from proxy.core.keys import KEY_VERSION
from proxy.errors import StoreUnavailable
from proxy.store.connection import (
    FAILURES,
    RedisGate,
    blocking_client,
    is_cluster,
    node_reader,
    pubsub,
    script,
)

log = logging.getLogger("llmcp.flight")
_STREAM_LINGER_MS = 30_000


@dataclass(slots=True)
class Flight:
    """This request's part in a flight: leader (it calls upstream) or follower."""

    lock: str
    token: str
    leader: bool
    streaming_leader: bool
    chunks_key: str = ""
    channel: str = ""
    cached: bytes | None = None  # the entry, found by join: no flight at all
    _heartbeat: asyncio.TimerHandle | None = field(default=None, repr=False)
    _queued: list[bytes] = field(default_factory=list, repr=False)  # chunks not yet written
    _writer: asyncio.Task[None] | None = field(default=None, repr=False)


def flight_lock(prefix: str, namespace: str, digest: str) -> str:
    return f"{prefix}:{KEY_VERSION}:{namespace}:flight:{{{digest}}}"


class SingleFlight:
    def __init__(self, gate: RedisGate, config: Config) -> None:
        self._gate = gate
        self._prefix = config.redis.key_prefix
        cfg = config.single_flight
        self.enabled = cfg.enabled
        self._lock_ms = cfg.lock_ms
        self.wait_s = cfg.wait_ms / 1000
        self._acquire = script(gate.client, "flight_acquire.lua")
        self._release = script(gate.client, "flight_release.lua")
        # Blocking reads wait up to lock_ms; they get their own connections and timeout.
        self._read_timeout_s = self._lock_ms / 1000 + 5
        self._blocking = blocking_client(gate.client, self._read_timeout_s, config.redis.max_connections)
        self._readers: dict[str, Any] = {}  # on a cluster: a blocking reader per node
        self._waiters: dict[str, list[asyncio.Future[str]]] = {}
        # Unique, not secret (a release compares them): a random prefix per process and a
        # counter; every miss takes one (os.urandom per request was ~10 us here).
        prefix = os.urandom(6).hex()  # once: the generator would run os.urandom for every token
        self._tokens = (f"{prefix}{n:x}" for n in itertools.count())
        self._renewals: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Event | None = None

    async def join(
        self, namespace: str, digest: str, streaming: bool, entry_key: str | None = None
    ) -> Flight:
        """Become the leader, or learn that another request already is. With `entry_key`
        (the cache entry of this digest), the entry is looked at first, in the same
        script: when it is there now, `Flight.cached` holds it and nobody leads."""
        lock = flight_lock(self._prefix, namespace, digest)
        token = f"{next(self._tokens)}:{'s' if streaming else 'n'}"
        keys = [lock] if entry_key is None else [lock, entry_key]
        won, holder = await self._gate.script(self._acquire, keys, [token, self._lock_ms])
        if won == 2:
            return Flight(lock, "", False, False, cached=holder if isinstance(holder, bytes) else None)
        holder = holder.decode() if isinstance(holder, bytes) else str(holder)
        # The chunk stream is the leader's own: after Redis lost the lock (a restart), a second
        # leader of the same request must not write into the first one's stream.
        chunks = f"{lock}:{holder.split(':', 1)[0]}:chunks"
        flight = Flight(lock, holder, bool(won), holder.endswith(":s"), chunks, lock)
        if flight.leader:
            flight._heartbeat = asyncio.get_running_loop().call_later(
                self._lock_ms / 3000, self._beat, flight
            )
        return flight

    def _beat(self, flight: Flight) -> None:
        """Every lock_ms/3 while the leader works, its lock's TTL renewed. A timer, not a
        task per flight: most flights end long before their first beat."""
        loop = asyncio.get_running_loop()
        flight._heartbeat = loop.call_later(self._lock_ms / 3000, self._beat, flight)
        renewal = loop.create_task(self._renew(flight))
        self._renewals.add(renewal)  # held until done, so it is not garbage-collected mid-way
        renewal.add_done_callback(self._renewals.discard)

    async def _renew(self, flight: Flight) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._gate.run(lambda r: r.pexpire(flight.lock, self._lock_ms))

    def share(self, flight: Flight, chunk: dict[str, Any]) -> None:
        """A streaming leader shares one chunk with its streaming followers: queued here,
        written by the flight's writer task (never awaited in front of the client)."""
        flight._queued.append(orjson.dumps(chunk))
        if flight._writer is None or flight._writer.done():
            flight._writer = asyncio.get_running_loop().create_task(self._write_queued(flight))

    async def _write_queued(self, flight: Flight) -> None:
        """Writes the queued chunks, all that queued meanwhile in one round trip, until none
        is left; a new chunk starts a new writer. A failed write drops its batch (the
        followers' read then fails or times out, and they call upstream themselves)."""
        while flight._queued:
            batch, flight._queued = flight._queued, []

            async def write(r: Any, batch: list[bytes] = batch) -> None:
                pipe = r.pipeline(transaction=False)
                for data in batch:
                    pipe.xadd(flight.chunks_key, {"c": data}, maxlen=100_000, approximate=True)
                # Every time, in the same round trip: if Redis restarted mid-stream, the
                # stream is created again and must not be left without a TTL should the
                # leader die.
                pipe.pexpire(flight.chunks_key, self._lock_ms + _STREAM_LINGER_MS)
                await pipe.execute()

            with contextlib.suppress(StoreUnavailable):
                await self._gate.run(write)

    async def _written(self, flight: Flight) -> None:
        """Wait until every shared chunk is written (followers must read them all before
        "done" tells them the answer is complete)."""
        while flight._writer is not None and not flight._writer.done():
            await asyncio.shield(flight._writer)

    async def settle(self, flight: Flight) -> None:
        """Before a release: the heartbeat stops, every shared chunk is written."""
        if flight._heartbeat is not None:
            flight._heartbeat.cancel()
        await self._written(flight)

    def release_spec(self, flight: Flight) -> tuple[list[str], list[Any]]:
        """The keys and arguments with which lua/store.lua releases this flight along with
        the answer it stores (call `settle` first)."""
        return [flight.lock, flight.chunks_key], [flight.token, flight.channel, _STREAM_LINGER_MS]

    async def finish(self, flight: Flight, ok: bool) -> None:
        """Release the lock and wake the followers ("done": the answer is cached)."""
        await self.settle(flight)
        outcome = "done" if ok else "failed"
        keys = [flight.lock, flight.chunks_key]
        args: list[Any] = [flight.token, flight.channel, outcome, _STREAM_LINGER_MS]
        with contextlib.suppress(StoreUnavailable):
            await self._gate.script(self._release, keys, args)

    async def wait(self, flight: Flight, timeout_s: float) -> str:
        """Wait for the leader: "done", "failed", or "gone" (timed out, or its lock vanished)."""
        future = await self._register(flight.channel)
        try:
            # A leader that ended between our join and this registration published before we
            # listened: its lock, already gone, says so now (not `check_every` later).
            if not await self._gate.run(lambda r: r.exists(flight.lock)):
                return "done" if future.done() and future.result() == "done" else "gone"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            check_every = self._lock_ms / 2000
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return "gone"
                try:
                    return await asyncio.wait_for(asyncio.shield(future), min(remaining, check_every))
                except TimeoutError:
                    if not await self._gate.run(lambda r: r.exists(flight.lock)):
                        return "done" if future.done() and future.result() == "done" else "gone"
        finally:
            self._unregister(flight.channel, future)

    async def _register(self, channel: str) -> asyncio.Future[str]:
        await self._ensure_listener()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(future)
        return future

    def _unregister(self, channel: str, future: asyncio.Future[str]) -> None:
        waiters = self._waiters.get(channel)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiters[channel]

    async def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._subscribed = asyncio.Event()
            self._listener = asyncio.get_running_loop().create_task(self._listen(self._subscribed))
        assert self._subscribed is not None
        try:
            await asyncio.wait_for(self._subscribed.wait(), 2.0)
        except TimeoutError:
            raise StoreUnavailable("could not subscribe for single-flight notifications") from None

    async def _listen(self, subscribed: asyncio.Event) -> None:
        subscription = None
        try:
            subscription = await pubsub(self._blocking)
            await subscription.psubscribe(f"{self._prefix}:{KEY_VERSION}:*:flight:*")
            subscribed.set()
            async for message in subscription.listen():
                if message.get("type") != "pmessage":
                    continue
                channel = message["channel"].decode()
                for future in self._waiters.get(channel, ()):
                    if not future.done():
                        future.set_result(message["data"].decode())
        except FAILURES as exc:
            log.warning("single-flight subscription lost (%s); it restarts on the next miss", exc)
            for waiters in self._waiters.values():
                for future in waiters:
                    if not future.done():
                        future.set_result("gone")
        finally:
            if subscription is not None:
                with contextlib.suppress(*FAILURES):
                    await subscription.aclose()

    async def follow_stream(self, flight: Flight, timeout_s: float) -> AsyncGenerator[dict[str, Any], None]:
        """The leader's chunks, live, from the first; raises StoreUnavailable if it fails."""
        last = "0-0"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            block_ms = max(1, int(min(deadline - loop.time(), self._lock_ms / 1000) * 1000))
            reply: Any
            try:
                reader = self._blocking
                if is_cluster(self._gate.client):
                    reader = node_reader(
                        self._gate.client, flight.chunks_key, self._read_timeout_s, self._readers
                    )
                reply = await reader.xread({flight.chunks_key: last}, count=100, block=block_ms)
            except Exception as exc:  # FAILURES, and whatever else the client raises: follow no more
                raise StoreUnavailable(f"reading the shared stream failed: {exc}") from exc
            if not reply:
                if not await self._gate.run(lambda r: r.exists(flight.lock, flight.chunks_key)):
                    raise StoreUnavailable("the single-flight leader went away")
                continue
            for entry_id, fields in reply[0][1]:
                last = entry_id.decode()
                if b"end" in fields:
                    if fields[b"end"] != b"done":
                        raise StoreUnavailable("the single-flight leader failed")
                    return
                yield orjson.loads(fields[b"c"])
        raise StoreUnavailable("timed out following the single-flight leader")

    async def close(self) -> None:
        for renewal in list(self._renewals):
            renewal.cancel()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._blocking.aclose()
        for reader in self._readers.values():
            await reader.aclose()
