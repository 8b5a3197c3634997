"""The chat pipeline: parse -> key -> cache -> single flight -> limit -> upstream -> store.

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

from proxy.cache import CacheStore
from proxy.calls import SSE, Call, Reply, RequestMeta, cache_controls, for_client, hit_reply, note_usage
from proxy.coalesce import Coalescer
from proxy.config import Config, TenantConfig
from proxy.errors import ModelNotFound, ProxyError, StoreUnavailable, UpstreamError
from proxy.flight import SingleFlight
from proxy.keys import cache_key, chat_digest
from proxy.ratelimit import RateLimiter
from proxy.sse import DONE, StreamAssembler, event
from proxy.stats import RequestRecord
from proxy.tokens import completion_allowance, count_text, encoding, encoding_name, prompt_tokens
from proxy.upstream import Upstreams
from proxy.validation import check_chat_request, parse_json_object

log = logging.getLogger("llmcp.service")


class ChatService:
    def __init__(
        self,
        config: Config,
        cache: CacheStore,
        upstreams: Upstreams,
        limiter: RateLimiter,
        flight: SingleFlight,
    ) -> None:
        self.config = config
        self.cache = cache
        self.upstreams = upstreams
        self.limiter = limiter
        self.flight = flight
        self._coalescer = Coalescer(flight, cache)

    def _resolve(self, tenant: TenantConfig, raw: bytes, meta: RequestMeta, record: RequestRecord) -> Call:
        body = parse_json_object(raw)
        name = body.get("model")
        model = self.config.model_index.get(name) if isinstance(name, str) else None
        if model is not None:
            record.model = model.name  # so a bad request is counted against its model
        check_chat_request(body)
        if model is None:
            raise ModelNotFound(
                f"The model '{body['model']}' does not exist or you do not have access to it.",
                param="model",
            )
        digest = chat_digest(body, model)
        namespace = self.namespace(tenant)
        stream = body.get("stream") is True
        options = body.get("stream_options") or {}
        record.digest = digest
        return Call(
            record=record,
            tenant=tenant,
            model=model,
            body=body,
            key=cache_key(self.config.redis.key_prefix, namespace, "chat", digest),
            controls=cache_controls(meta, self.config, tenant, model),
            stream=stream,
            include_usage=stream and options.get("include_usage") is True,
            headers={"X-Cache-Key": digest},
        )

    def namespace(self, tenant: TenantConfig) -> str:
        return tenant.name if self.config.cache.scope == "tenant" else "shared"

    async def chat(
        self, tenant: TenantConfig, raw: bytes, meta: RequestMeta, record: RequestRecord | None = None
    ) -> Reply:
        """Answer one chat request; `record` is filled in with what happened, for stats."""
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
            flight = await self.flight.join(self.namespace(call.tenant), digest, call.stream)
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
                call.prompt_estimate = prompt_tokens(call.body, call.model)
                tokens = call.prompt_estimate + completion_allowance(
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
        upstream = self.upstreams.for_model(call.model)
        try:
            response = await upstream.complete(call.model, call.body)
        except BaseException:
            self.limiter.settle(call.reservation, 0)
            raise
        call.record.cache = call.headers["X-Cache"]  # counted once the upstream answered
        self.limiter.settle(call.reservation, note_usage(call.record, response.get("usage")))
        body = orjson.dumps(response)
        stored = False
        if _is_whole(call, response.get("choices") or []):
            stored = await self._store(call, body, response.get("usage"))
        await self._finish_flight(call, stored)
        return Reply(200, call.headers, body)

    async def _stream_miss(self, call: Call) -> Reply:
        upstream = self.upstreams.for_model(call.model)
        try:
            chunks = await upstream.stream(call.model, call.body)
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
        assembler = StreamAssembler()
        chunk: dict[str, Any] | None = first
        try:
            while chunk is not None:
                assembler.add(chunk)
                if call.flight is not None:
                    await self.flight.append(call.flight, chunk)  # streaming followers read it live
                shown = for_client(chunk, call.include_usage)
                if shown is not None:
                    yield event(shown)
                chunk = await anext(chunks, None)
            stored = False
            answer = assembler.response()
            if assembler.complete and _is_whole(call, answer["choices"]):
                stored = await self._store(call, orjson.dumps(answer), assembler.usage)
            else:
                log.warning("upstream stream ended incomplete (a choice missing or unfinished); not cached")
            await self._finish_flight(call, stored)
            yield DONE
        except ProxyError as exc:
            log.warning("upstream stream failed mid-way (%s); not cached", exc.message)
            call.record.error = "upstream"
            yield event(exc.body())
        finally:
            await self._finish_flight(call, False)  # no-op when already finished
            if assembler.usage:
                note_usage(call.record, assembler.usage)
            self.limiter.settle(call.reservation, self._streamed_tokens(call, assembler))
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                await closer()

    def _streamed_tokens(self, call: Call, assembler: StreamAssembler) -> int:
        """Real usage when the stream got that far, else prompt estimate + text received."""
        if assembler.usage:
            usage = assembler.usage
            return int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        if call.reservation is None:
            return 0
        enc = encoding(encoding_name(call.model))
        text = "".join(
            str(c["message"].get(f) or "")
            for c in assembler.response()["choices"]
            for f in ("content", "reasoning_content")
        )
        return call.prompt_estimate + count_text(text, enc)

    async def _store(self, call: Call, body: bytes, usage: dict[str, Any] | None) -> bool:
        """True when the answer is now in the cache."""
        if not call.controls.store:
            return False
        usage = usage or {}
        try:
            stored = await self.cache.put(
                call.key,
                body,
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
                call.controls.ttl,
                call.model.name,
            )
        except StoreUnavailable:
            return False
        if not stored:
            log.info("answer of %d bytes is over cache.max_entry_bytes; not cached", len(body))
        return stored


def _is_whole(call: Call, choices: list[dict[str, Any]]) -> bool:
    """Only whole answers are cached: every one of the `n` choices asked for, each finished.
    (litellm's stream wrapper can drop choices after the first: such a stream is not stored.)"""
    wanted = call.body.get("n") or 1
    return len(choices) >= wanted and all(c.get("finish_reason") for c in choices)
