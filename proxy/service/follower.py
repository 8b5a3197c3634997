"""The follower's side of single flight: be answered by the leader's upstream call.

A follower is served as a hit with `X-Cache-Coalesced: 1`: from the cache once the leader
stored its answer, or, when both stream, live from the leader's chunk stream. Whenever
that cannot happen (the leader failed, vanished or took too long) `follow` returns None
and the request makes its own upstream call: a follower never hangs and never gets a
cached error. Followers are not charged by the rate limiter; only the leader's call is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

from proxy.core.request import SSE, Call, Reply, hit_reply, note_usage
from proxy.errors import StoreUnavailable, UpstreamError
from proxy.store.cache import CacheStore
from proxy.store.flight import Flight, SingleFlight

log = logging.getLogger("llmcp.flight")


class Coalescer:
    def __init__(self, flight: SingleFlight, cache: CacheStore) -> None:
        self._flight = flight
        self._cache = cache

    async def follow(self, call: Call, flight: Flight) -> Reply | None:
        """The leader's answer for this request, or None to fall back to an own call."""
        try:
            if call.stream and flight.streaming_leader:
                return await self._follow_live(call, flight)
            outcome = await self._flight.wait(flight, self._flight.wait_s)
            if outcome == "failed":
                return None
            entry = await self._cache.get(call.key)
        except StoreUnavailable as exc:
            log.info("single flight: following failed (%s); calling upstream", exc)
            return None
        if entry is None:
            return None
        return self._coalesced(call, hit_reply(call, entry))

    @staticmethod
    def _coalesced(call: Call, reply: Reply) -> Reply:
        reply.headers["X-Cache-Coalesced"] = "1"
        call.record.coalesced = True
        return reply

    async def _follow_live(self, call: Call, flight: Flight) -> Reply | None:
        chunks = self._flight.follow_stream(flight, self._flight.wait_s)
        try:
            first = await anext(chunks)
        except (StoreUnavailable, StopAsyncIteration):
            await chunks.aclose()
            return None
        call.headers["X-Cache"] = "HIT"
        call.record.cache = "HIT"
        reply = Reply(200, call.headers, stream=self._relay(call, first, chunks), media_type=SSE)
        return self._coalesced(call, reply)

    @staticmethod
    async def _relay(
        call: Call, first: dict[str, Any], chunks: AsyncGenerator[dict[str, Any], None]
    ) -> AsyncGenerator[bytes, None]:
        api = call.api
        chunk: dict[str, Any] | None = first
        try:
            while chunk is not None:
                usage = api.chunk_usage(chunk)
                if usage:
                    note_usage(call.record, usage)
                shown = api.encode(chunk, call.include_usage)
                if shown is not None:
                    yield shown
                chunk = await anext(chunks, None)
            if api.done:
                yield api.done
        except StoreUnavailable as exc:
            call.record.error = "upstream"
            yield api.error_event(
                UpstreamError(f"The answer being shared with this request broke off: {exc}")
            )
        finally:
            await chunks.aclose()
