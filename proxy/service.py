"""The chat pipeline: parse -> key -> cache -> upstream -> store.

Framework-free: it takes bytes and a few header values and returns a `Reply`, so the
HTTP layer stays thin and the hit path does only what a hit needs (one JSON parse of the
request, one hash, one Redis GET, no litellm, no pydantic).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.cache import CacheStore, Entry
from proxy.config import Config, ModelConfig, TenantConfig
from proxy.errors import InvalidRequest, ModelNotFound, ProxyError, StoreUnavailable, UpstreamError
from proxy.keys import cache_key, chat_digest
from proxy.ratelimit import RateLimiter, Reservation
from proxy.sse import DONE, StreamAssembler, event, replay_chunks
from proxy.stats import RequestRecord
from proxy.tokens import completion_allowance, count_text, encoding, encoding_name, prompt_tokens
from proxy.upstream import Upstreams
from proxy.validation import check_chat_request, parse_json_object

log = logging.getLogger("llmcp.service")

JSON = "application/json"
SSE = "text/event-stream"


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """The request headers the pipeline reads (names already lower-cased by the server)."""

    cache_control: str | None = None
    cache_ttl: str | None = None
    end_user: str | None = None


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    media_type: str = JSON


@dataclass(frozen=True, slots=True)
class CacheControls:
    lookup: bool
    store: bool
    ttl: int


def cache_controls(
    meta: RequestMeta, config: Config, tenant: TenantConfig, model: ModelConfig
) -> CacheControls:
    """`Cache-Control: no-cache` skips the lookup, `no-store` skips the write; X-Cache-TTL
    sets the TTL (capped by cache.max_ttl_seconds; 0 means do not store)."""
    directives = {d.strip().lower() for d in (meta.cache_control or "").split(",")}
    ttl = tenant.cache_ttl_seconds or model.cache_ttl_seconds or config.cache.ttl_seconds
    if meta.cache_ttl is not None:
        try:
            ttl = int(meta.cache_ttl)
        except ValueError:
            ttl = -1
        if ttl < 0:
            raise InvalidRequest(
                "X-Cache-TTL must be a whole number of seconds (0 = do not store).",
                param="X-Cache-TTL",
            )
    ttl = min(ttl, config.cache.max_ttl_seconds)
    return CacheControls(
        lookup="no-cache" not in directives,
        store="no-store" not in directives and ttl > 0,
        ttl=ttl,
    )


@dataclass(slots=True)
class _Call:
    """What one request resolved to, passed between the pipeline's steps."""

    tenant: TenantConfig
    model: ModelConfig
    body: dict[str, Any]
    key: str
    controls: CacheControls
    stream: bool
    include_usage: bool
    headers: dict[str, str] = field(default_factory=dict)
    record: RequestRecord = field(default_factory=RequestRecord)
    reservation: Reservation | None = None
    prompt_estimate: int = 0


class ChatService:
    def __init__(self, config: Config, cache: CacheStore, upstreams: Upstreams, limiter: RateLimiter) -> None:
        self.config = config
        self.cache = cache
        self.upstreams = upstreams
        self.limiter = limiter

    def _resolve(self, tenant: TenantConfig, raw: bytes, meta: RequestMeta, record: RequestRecord) -> _Call:
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
        namespace = tenant.name if self.config.cache.scope == "tenant" else "shared"
        stream = body.get("stream") is True
        options = body.get("stream_options") or {}
        record.digest = digest
        return _Call(
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
                return self._hit(call, entry)
        call.headers["X-Cache"] = status
        await self._limit(call, meta, None)
        if call.stream:
            return await self._stream_miss(call)
        return await self._miss(call)

    async def _limit(self, call: _Call, meta: RequestMeta, known_tokens: int | None) -> None:
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

    def _hit(self, call: _Call, entry: Entry) -> Reply:
        call.headers["X-Cache"] = "HIT"
        call.record.cache = "HIT"
        call.record.prompt_tokens = entry.prompt_tokens
        call.record.completion_tokens = entry.completion_tokens
        call.headers["Age"] = str(entry.age_seconds())
        if not call.stream:
            return Reply(200, call.headers, entry.body)
        chunks = replay_chunks(orjson.loads(entry.body), call.include_usage)
        body = b"".join(event(c) for c in chunks) + DONE
        return Reply(200, call.headers, body, media_type=SSE)

    async def _miss(self, call: _Call) -> Reply:
        upstream = self.upstreams.for_model(call.model)
        try:
            response = await upstream.complete(call.model, call.body)
        except BaseException:
            self.limiter.settle(call.reservation, 0)
            raise
        usage = response.get("usage") or {}
        call.record.cache = call.headers["X-Cache"]  # counted once the upstream answered
        call.record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        call.record.completion_tokens = int(usage.get("completion_tokens") or 0)
        self.limiter.settle(call.reservation, _total_tokens(usage))
        body = orjson.dumps(response)
        choices = response.get("choices") or []
        if choices and all(c.get("finish_reason") for c in choices):
            await self._store(call, body, response.get("usage"))
        return Reply(200, call.headers, body)

    async def _stream_miss(self, call: _Call) -> Reply:
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
        self, call: _Call, first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]]
    ) -> AsyncIterator[bytes]:
        """Forward chunks as they arrive; store the assembled answer only after a clean end."""
        assembler = StreamAssembler()
        chunk: dict[str, Any] | None = first
        try:
            while chunk is not None:
                assembler.add(chunk)
                shown = _for_client(chunk, call.include_usage)
                if shown is not None:
                    yield event(shown)
                chunk = await anext(chunks, None)
            if assembler.complete:
                body = orjson.dumps(assembler.response())
                await self._store(call, body, assembler.usage)
            else:
                log.warning("upstream stream ended without a finish_reason; not cached")
            yield DONE
        except ProxyError as exc:
            log.warning("upstream stream failed mid-way (%s); not cached", exc.message)
            call.record.error = "upstream"
            yield event(exc.body())
        finally:
            if assembler.usage:
                call.record.prompt_tokens = int(assembler.usage.get("prompt_tokens") or 0)
                call.record.completion_tokens = int(assembler.usage.get("completion_tokens") or 0)
            self.limiter.settle(call.reservation, self._streamed_tokens(call, assembler))
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                await closer()

    def _streamed_tokens(self, call: _Call, assembler: StreamAssembler) -> int:
        """Real usage when the stream got that far, else prompt estimate + text received."""
        if assembler.usage:
            return _total_tokens(assembler.usage)
        if call.reservation is None:
            return 0
        enc = encoding(encoding_name(call.model))
        text = "".join(
            str(c["message"].get(f) or "")
            for c in assembler.response()["choices"]
            for f in ("content", "reasoning_content")
        )
        return call.prompt_estimate + count_text(text, enc)

    async def _store(self, call: _Call, body: bytes, usage: dict[str, Any] | None) -> None:
        if not call.controls.store:
            return
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
            return
        if not stored:
            log.info("answer of %d bytes is over cache.max_entry_bytes; not cached", len(body))


def _total_tokens(usage: dict[str, Any] | None) -> int:
    usage = usage or {}
    return int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)


def _for_client(chunk: dict[str, Any], include_usage: bool) -> dict[str, Any] | None:
    """The proxy always asks upstream for usage; show it only to clients that asked."""
    if include_usage or "usage" not in chunk:
        return chunk
    if not chunk.get("choices"):
        return None
    return {k: v for k, v in chunk.items() if k != "usage"}
