"""A streaming miss: relay the provider's chunks as they arrive, share them with streaming
single-flight followers, and store the assembled answer only after a clean end.

Whatever ends the stream (its end, a provider failure, a client hang-up, a cancellation)
`_release` runs once: followers woken, usage recorded, the rate-limit reservation
settled, the upstream call closed. With `upstream.on_client_disconnect: finish` a client
that hangs up hands the rest of the stream to a background task, which reads it to its
end and caches the answer (it is being paid for anyway).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy.core.apis.base import Assembler, GenerationAdapter, Usage
from proxy.core.tokens import count_text, encoding, encoding_name
from proxy.errors import ProxyError, UpstreamError, UpstreamTimeout, error_reason
from proxy.service.request import SSE, ProxyRequest, Reply
from proxy.service.stages import Stages
from proxy.service.tracing import call_ended, call_failed, call_responded, call_started

log = logging.getLogger("llmcp.service")
Chunks = AsyncIterator[dict[str, Any]]


class StreamingMiss:
    def __init__(self, stages: Stages) -> None:
        self._stages = stages

    async def start(self, api: GenerationAdapter, req: ProxyRequest) -> Reply:
        """Open the upstream stream and wait for its first chunk (so an upstream that fails
        at once gets a proper error status, not a 200 with an error event)."""
        stages = self._stages
        assert req.model is not None
        upstream = stages.upstreams.for_model(req.model, api)
        call_started(req.trace, req.model, req.body, True)
        try:
            chunks = await upstream.stream(req.model, stages.forwarded_body(req), api)
            first = await anext(chunks)
        except StopAsyncIteration:
            stages.settle(req, None)  # the provider answered: an empty stream
            error = UpstreamError("The upstream provider ended the stream without an answer.")
            call_failed(req.trace, error)
            raise error from None
        except BaseException as exc:
            stages.settle_failure(req, exc)
            call_failed(req.trace, exc)
            raise
        req.answered_upstream()
        call_responded(req.trace, first)
        return Reply(stream=self._relay(api, req, first, chunks), media_type=SSE)

    async def _relay(
        self, api: GenerationAdapter, req: ProxyRequest, first: dict[str, Any], chunks: Chunks
    ) -> AsyncIterator[bytes]:
        """Forward chunks as they arrive; store the assembled answer only after a clean end."""
        stages = self._stages
        assembler = api.assembler()
        chunk: dict[str, Any] | None = first
        loop = asyncio.get_running_loop()
        deadline = loop.time() + stages.config.server.max_stream_seconds
        finish = stages.config.upstream.on_client_disconnect == "finish"
        pending: asyncio.Future[dict[str, Any] | None] | None = None
        handed_off = False
        try:
            while chunk is not None:
                if loop.time() > deadline:
                    raise UpstreamTimeout("The stream ran past server.max_stream_seconds; it was cut off.")
                assembler.add(chunk)
                if req.flight is not None:
                    stages.flight.share(req.flight, chunk)  # streaming followers read it live
                shown = api.encode(chunk, req.include_usage)
                if shown is not None:
                    yield shown
                if finish:  # shielded: a hang-up while waiting must not break the upstream read
                    pending = asyncio.ensure_future(anext(chunks, None))
                    chunk = await asyncio.shield(pending)
                    pending = None
                else:
                    chunk = await anext(chunks, None)
            await self._conclude(api, req, assembler)
            if api.done:
                yield api.done
        except ProxyError as exc:
            log.warning("upstream stream failed mid-way (%s); not cached", exc.message)
            req.record.error, req.record.reason = "upstream", error_reason(exc)
            call_failed(req.trace, exc)
            yield api.error_event(exc)
        except (GeneratorExit, asyncio.CancelledError):
            if finish:
                handed_off = True
                stages.spawn(self._finish_in_background(api, req, assembler, chunks, pending))
            raise
        finally:
            if not handed_off:
                await self._release(api, req, assembler, chunks)

    async def _conclude(self, api: GenerationAdapter, req: ProxyRequest, assembler: Assembler) -> None:
        """The stream ended: store a whole answer, wake the single flight's followers."""
        if not assembler.ended:
            # The provider stopped sending before the end: say so, instead of a [DONE]
            # that would make a truncated answer look whole.
            raise UpstreamError("The upstream provider's stream ended before the answer was complete.")
        stored = False
        answer = assembler.response()
        if assembler.complete and api.is_whole(req.body, answer):
            # Served either way; stored only when the proxy is sure to replay it exactly
            # (`unstorable`: an ambiguous merge, no usage in the stream).
            doubt = api.unstorable(assembler)
            body = orjson.dumps(answer)
            stored = await self._stages.store(req, answer, body, assembler.usage_counts(), doubt)
        else:
            log.warning("stream ended without a whole answer (a choice missing or failed); not cached")
        await self._stages.finish_flight(req, stored)

    async def _finish_in_background(
        self,
        api: GenerationAdapter,
        req: ProxyRequest,
        assembler: Assembler,
        chunks: Chunks,
        pending: asyncio.Future[dict[str, Any] | None] | None,
    ) -> None:
        stages = self._stages
        try:
            waiting = await pending if pending is not None else None
            if waiting is not None:
                assembler.add(waiting)
                if req.flight is not None:
                    stages.flight.share(req.flight, waiting)
            async for chunk in chunks:
                assembler.add(chunk)
                if req.flight is not None:
                    stages.flight.share(req.flight, chunk)
            await self._conclude(api, req, assembler)
        except Exception as exc:  # nobody is listening any more: log, cache nothing
            log.warning("finishing a stream after the client left failed (%s); not cached", exc)
        finally:
            await self._release(api, req, assembler, chunks)

    async def _release(
        self, api: GenerationAdapter, req: ProxyRequest, assembler: Assembler, chunks: Chunks
    ) -> None:
        """Whatever happened: followers woken, usage recorded, reservation settled, upstream closed."""
        stages = self._stages
        # Settled first: a second cancellation during the awaits below cannot skip it.
        stages.settle(req, self._streamed_usage(api, req, assembler), assembler.cached_tokens())
        await stages.finish_flight(req, False)  # no-op when already finished
        reported = assembler.usage_counts()
        if reported:
            req.note_usage(reported, assembler.cached_tokens())
        call_ended(req.trace, reported)
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()

    def _streamed_usage(
        self, api: GenerationAdapter, req: ProxyRequest, assembler: Assembler
    ) -> Usage | None:
        """Real usage when the stream got that far, else prompt estimate + text received
        (a broken stream, a client that hung up: the provider bills what it sent)."""
        usage = assembler.usage_counts()
        if usage:
            return usage
        if req.reservation is None:
            return None
        return self._estimated_usage(api, req, assembler)

    @staticmethod
    def _estimated_usage(api: GenerationAdapter, req: ProxyRequest, assembler: Assembler) -> tuple[int, int]:
        assert req.model is not None
        prompt = req.prompt_estimate or api.prompt_tokens(req.body, req.model)
        return prompt, count_text(assembler.text(), encoding(encoding_name(req.model)))
