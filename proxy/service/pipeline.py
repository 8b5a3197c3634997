"""The pipeline: parse -> key -> cache -> single flight -> limit -> upstream -> store.

One `GenerationService` per cached API (chat completions, legacy completions, Responses
API); the `Api` it holds supplies what differs between them (`proxy.core.apis.base`).
Framework-free: it takes bytes and a few header values and returns a `Reply`, so the
HTTP layer stays thin and the hit path does only what a hit needs (one JSON parse of the
request, one hash, one Redis GET, no litellm, no pydantic).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy.config import Config, TenantConfig
from proxy.core.apis.base import Api, Assembler
from proxy.core.keys import cache_key
from proxy.core.request import (
    SSE,
    CacheControls,
    Call,
    Reply,
    RequestMeta,
    cache_controls,
    hit_reply,
    note_usage,
)
from proxy.core.tokens import count_text, encoding, encoding_name
from proxy.core.validation import parse_json_object
from proxy.errors import ModelNotFound, ProxyError, StoreUnavailable, UpstreamError, UpstreamTimeout
from proxy.service.follower import Coalescer
from proxy.stats.recorder import RequestRecord
from proxy.store.cache import CacheStore
from proxy.store.flight import SingleFlight
from proxy.store.ratelimit import RateLimiter
from proxy.store.review import ReviewQueue, is_sampled
from proxy.upstream.litellm_upstream import Upstreams

log = logging.getLogger("llmcp.service")


class GenerationService:
    def __init__(
        self,
        api: Api,
        config: Config,
        cache: CacheStore,
        upstreams: Upstreams,
        limiter: RateLimiter,
        flight: SingleFlight,
        review: ReviewQueue,
    ) -> None:
        self.api = api
        self.config = config
        self.review = review
        self.cache = cache
        self.upstreams = upstreams
        self.limiter = limiter
        self.flight = flight
        self._coalescer = Coalescer(flight, cache)
        self._background: set[asyncio.Task[None]] = set()

    def _resolve(self, tenant: TenantConfig, raw: bytes, meta: RequestMeta, record: RequestRecord) -> Call:
        body = parse_json_object(raw)
        name = body.get("model")
        model = self.config.model_index.get(name) if isinstance(name, str) else None
        if model is not None:
            record.model = model.name  # so a bad request is counted against its model
        api = self.api
        api.check(body)
        if model is None:
            raise ModelNotFound(
                f"The model '{body['model']}' does not exist or you do not have access to it.",
                param="model",
            )
        digest = api.digest(body, model)
        namespace = self.config.cache.namespace(tenant.name)
        record.digest = digest
        controls = cache_controls(meta, self.config, tenant, model)
        if api.uncacheable(body):
            controls = CacheControls(lookup=False, store=False, ttl=controls.ttl)
        return Call(
            api=api,
            record=record,
            tenant=tenant,
            model=model,
            body=body,
            key=cache_key(self.config.redis.key_prefix, namespace, api.key_kind, digest),
            controls=controls,
            stream=body.get("stream") is True,
            include_usage=api.include_usage(body),
            headers={"X-Cache-Key": digest},
        )

    async def answer(
        self, tenant: TenantConfig, raw: bytes, meta: RequestMeta, record: RequestRecord | None = None
    ) -> Reply:
        """Answer one request; `record` is filled in with what happened, for stats."""
        call = self._resolve(tenant, raw, meta, record or RequestRecord(tenant=tenant.name))
        status = "BYPASS"
        if call.controls.lookup:
            try:
                entry = await self.cache.get(call.key)
                status = "MISS"
            except StoreUnavailable:
                entry = None
                call.record.redis_error = True
            if entry is not None:
                if tenant.limit_cache_hits:
                    await self._limit(call, meta, entry.prompt_tokens + entry.completion_tokens)
                return hit_reply(call, entry)
        call.headers["X-Cache"] = status
        if status == "MISS" and call.controls.store and self.flight.enabled:
            shared = await self._single_flight(call)
            if shared is not None:
                return shared
        try:
            await self._limit(call, meta, None)
            if call.stream:
                return await self._stream_miss(call)
            return await self._miss(call)
        except BaseException:
            await self._finish_flight(call, False)
            raise

    async def _single_flight(self, call: Call) -> Reply | None:
        """Lead (returns None: go upstream) or follow another request's identical miss."""
        digest = call.headers["X-Cache-Key"]
        try:
            flight = await self.flight.join(
                self.config.cache.namespace(call.tenant.name), digest, call.stream
            )
            if not flight.leader:
                return await self._coalescer.follow(call, flight)
            call.flight = flight
            # A leader that just finished may have stored the answer since our lookup.
            entry = await self.cache.get(call.key)
        except StoreUnavailable:
            return None
        if entry is None:
            return None
        await self._finish_flight(call, True)
        return hit_reply(call, entry)

    async def _finish_flight(self, call: Call, stored: bool) -> None:
        """Release this request's flight once; shielded so a cancelled request still wakes its followers."""
        flight, call.flight = call.flight, None
        if flight is not None:
            await asyncio.shield(self.flight.finish(flight, stored))

    async def _limit(self, call: Call, meta: RequestMeta, known_tokens: int | None) -> None:
        """Reserve from the tenant's buckets (raises RateLimited); hits pass `known_tokens`."""
        end_user = meta.end_user or call.body.get("user")
        buckets = self.limiter.plan(
            call.tenant, call.model.name, end_user if isinstance(end_user, str) else None
        )
        if not buckets:
            return
        tokens = known_tokens
        if tokens is None:
            tokens = 0
            if any(b.kind == "tokens" for b in buckets):
                call.prompt_estimate = call.api.prompt_tokens(call.body, call.model)
                tokens = call.prompt_estimate + call.api.completion_allowance(
                    call.body, self.config.rate_limit.default_max_tokens
                )
        reservation = await self.limiter.acquire(buckets, tokens)
        if reservation is None:
            call.record.limiter_error = True
        else:
            call.headers.update(reservation.headers())
            if known_tokens is None:
                call.reservation = reservation

    async def _miss(self, call: Call) -> Reply:
        upstream = self.upstreams.for_model(call.model, call.api.name)
        try:
            response = await upstream.complete(call.model, call.body, call.api.name)
        except BaseException:
            self.limiter.settle(call.reservation, 0)
            raise
        call.record.cache = call.headers["X-Cache"]  # counted once the upstream answered
        usage = call.api.usage_of(response)
        self.limiter.settle(call.reservation, note_usage(call.record, usage))
        body = orjson.dumps(response)
        stored = False
        if call.api.is_whole(call.body, response):
            stored = await self._store(call, body, usage)
        await self._finish_flight(call, stored)
        return Reply(200, call.headers, body)

    async def _stream_miss(self, call: Call) -> Reply:
        upstream = self.upstreams.for_model(call.model, call.api.name)
        try:
            chunks = await upstream.stream(call.model, call.body, call.api.name)
            first = await anext(chunks)
        except StopAsyncIteration:
            self.limiter.settle(call.reservation, 0)
            raise UpstreamError("The upstream provider ended the stream without an answer.") from None
        except BaseException:
            self.limiter.settle(call.reservation, 0)
            raise
        call.record.cache = call.headers["X-Cache"]
        return Reply(200, call.headers, stream=self._relay(call, first, chunks), media_type=SSE)

    async def _relay(
        self, call: Call, first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]]
    ) -> AsyncIterator[bytes]:
        """Forward chunks as they arrive; store the assembled answer only after a clean end."""
        api = call.api
        assembler = api.assembler()
        chunk: dict[str, Any] | None = first
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.server.max_stream_seconds
        finish = self.config.upstream.on_client_disconnect == "finish"
        pending: asyncio.Future[dict[str, Any] | None] | None = None
        handed_off = False
        try:
            while chunk is not None:
                if loop.time() > deadline:
                    raise UpstreamTimeout("The stream ran past server.max_stream_seconds; it was cut off.")
                assembler.add(chunk)
                if call.flight is not None:
                    await self.flight.append(call.flight, chunk)  # streaming followers read it live
                shown = api.encode(chunk, call.include_usage)
                if shown is not None:
                    yield shown
                if finish:  # shielded: a hang-up while waiting must not break the upstream read
                    pending = asyncio.ensure_future(anext(chunks, None))
                    chunk = await asyncio.shield(pending)
                    pending = None
                else:
                    chunk = await anext(chunks, None)
            await self._conclude(call, assembler)
            if api.done:
                yield api.done
        except ProxyError as exc:
            log.warning("upstream stream failed mid-way (%s); not cached", exc.message)
            call.record.error = "upstream"
            yield api.error_event(exc)
        except (GeneratorExit, asyncio.CancelledError):
            # The client hung up. With upstream.on_client_disconnect: finish, the answer
            # (already being paid for) is read to its end in the background and cached.
            if finish:
                handed_off = True
                self._spawn(self._finish_in_background(call, assembler, chunks, pending))
            raise
        finally:
            if not handed_off:
                await self._release(call, assembler, chunks)

    async def _conclude(self, call: Call, assembler: Assembler) -> None:
        """The stream ended: store a whole answer, wake the single flight's followers."""
        if not assembler.ended:
            # The provider stopped sending before the end: say so, instead of a [DONE]
            # that would make a truncated answer look whole.
            raise UpstreamError("The upstream provider's stream ended before the answer was complete.")
        stored = False
        answer = assembler.response()
        if assembler.complete and call.api.is_whole(call.body, answer):
            # Some providers' streams carry no usage: the header then holds the estimate.
            counts = assembler.usage_counts() or self._estimated_usage(call, assembler)
            stored = await self._store(call, orjson.dumps(answer), counts)
        else:
            log.warning("stream ended without a whole answer (a choice missing or failed); not cached")
        await self._finish_flight(call, stored)

    async def _finish_in_background(
        self,
        call: Call,
        assembler: Assembler,
        chunks: AsyncIterator[dict[str, Any]],
        pending: asyncio.Future[dict[str, Any] | None] | None,
    ) -> None:
        try:
            waiting = await pending if pending is not None else None
            if waiting is not None:
                assembler.add(waiting)
                if call.flight is not None:
                    await self.flight.append(call.flight, waiting)
            async for chunk in chunks:
                assembler.add(chunk)
                if call.flight is not None:
                    await self.flight.append(call.flight, chunk)
            await self._conclude(call, assembler)
        except Exception as exc:  # nobody is listening any more: log, cache nothing
            log.warning("finishing a stream after the client left failed (%s); not cached", exc)
        finally:
            await self._release(call, assembler, chunks)

    async def _release(self, call: Call, assembler: Assembler, chunks: AsyncIterator[dict[str, Any]]) -> None:
        """Whatever happened: followers woken, usage recorded, reservation settled, upstream closed."""
        await self._finish_flight(call, False)  # no-op when already finished
        reported = assembler.usage_counts()
        if reported:
            note_usage(call.record, reported)
        self.limiter.settle(call.reservation, self._streamed_tokens(call, assembler))
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)  # held until done, so it is not garbage-collected mid-way
        task.add_done_callback(self._background.discard)

    def _streamed_tokens(self, call: Call, assembler: Assembler) -> int:
        """Real usage when the stream got that far, else prompt estimate + text received."""
        usage = assembler.usage_counts()
        if usage:
            return sum(usage)
        if call.reservation is None:
            return 0
        return sum(self._estimated_usage(call, assembler))

    @staticmethod
    def _estimated_usage(call: Call, assembler: Assembler) -> tuple[int, int]:
        prompt = call.prompt_estimate or call.api.prompt_tokens(call.body, call.model)
        return prompt, count_text(assembler.text(), encoding(encoding_name(call.model)))

    async def _store(self, call: Call, body: bytes, usage: tuple[int, int] | None) -> bool:
        """True when the answer is now in the cache."""
        if not call.controls.store:
            return False
        prompt, completion = usage or (0, 0)
        review = self.config.review
        try:
            outcome = await self.cache.put(
                call.key,
                body,
                prompt,
                completion,
                call.controls.ttl,
                call.model.name,
                orjson.dumps(call.body) if review.keep_prompts else None,
            )
            digest = call.headers["X-Cache-Key"]
            if outcome == "stored" and is_sampled(digest, review.sample_rate):
                await self.review.sample(
                    self.config.cache.namespace(call.tenant.name), digest, call.api.key_kind
                )
        except StoreUnavailable:
            return False
        if outcome == "too_large":
            log.info("answer of %d bytes is over cache.max_entry_bytes; not cached", len(body))
        return outcome == "stored"
