"""The follower's side of single flight: be answered by the leader's upstream call.

A follower is served as a hit (`X-Cache-Coalesced: 1`; the stats count it as `coalesced`,
`ProxyRequest.served_coalesced`): from the cache once the leader
stored its answer, or, when both stream, live from the leader's chunk stream. Whenever
that cannot happen (the leader failed, vanished or took too long) `follow` returns None
and the request makes its own upstream call: a follower never hangs and never gets a
cached error. Followers are not charged by the rate limiter; only the leader's call is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

from proxy.core.apis.base import GenerationAdapter
from proxy.errors import StoreUnavailable, UpstreamError
from proxy.service.request import SSE, ProxyRequest, Reply
from proxy.service.stages import Recheck, Stages
from proxy.store.flight import Flight

log = logging.getLogger("llmcp.flight")


class Follower:
    def __init__(self, stages: Stages) -> None:
        self._flight = stages.flight

    async def follow(self, req: ProxyRequest, flight: Flight, recheck: Recheck) -> Reply | None:
        """The leader's answer for this request, or None to fall back to an own call."""
        try:
            if req.stream and flight.streaming_leader and isinstance(req.api, GenerationAdapter):
                return await self._follow_live(req.api, req, flight)
            outcome = await self._flight.wait(flight, self._flight.wait_s)
            if outcome == "failed":
                return None
            reply = await recheck()
        except StoreUnavailable as exc:
            log.info("single flight: following failed (%s); calling upstream", exc)
            return None
        if reply is not None:
            req.served_coalesced()
        return reply

    async def _follow_live(self, api: GenerationAdapter, req: ProxyRequest, flight: Flight) -> Reply | None:
        chunks = self._flight.follow_stream(flight, self._flight.wait_s)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:  # the leader's answer is stored, but nothing came to relay
            await chunks.aclose()
            return None
        except StoreUnavailable as exc:  # the leader failed before its first chunk, say
            log.info("single flight: following failed (%s); calling upstream", exc)
            await chunks.aclose()
            return None
        req.served_hit(0, 0, None)  # the leader's usage chunk fills the tokens in
        req.served_coalesced()
        return Reply(stream=self._relay(api, req, first, chunks), media_type=SSE)

    @staticmethod
    async def _relay(
        api: GenerationAdapter,
        req: ProxyRequest,
        first: dict[str, Any],
        chunks: AsyncGenerator[dict[str, Any], None],
    ) -> AsyncGenerator[bytes, None]:
        chunk: dict[str, Any] | None = first
        try:
            while chunk is not None:
                usage = api.chunk_usage(chunk)
                if usage:
                    req.note_usage(usage)
                shown = api.encode(chunk, req.include_usage)
                if shown is not None:
                    yield shown
                chunk = await anext(chunks, None)
            if api.done:
                yield api.done
        except StoreUnavailable as exc:
            req.record.error = "upstream"
            yield api.error_event(
                UpstreamError(f"The answer being shared with this request broke off: {exc}")
            )
        finally:
            await chunks.aclose()
