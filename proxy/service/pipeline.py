"""The pipeline: parse -> validate -> key -> cache controls -> lookup -> single flight ->
limit -> upstream -> store -> stats, for every cached endpoint.

Framework-free: it takes the request's bytes and its `ProxyRequest` and returns a
`Reply`; the HTTP layer builds the headers from the request afterwards. A hit does only
what a hit needs: one JSON parse of the request, one hash, one Redis GET, no litellm, no
pydantic. What differs per endpoint comes from its adapter (`proxy.core.apis`): one
answer per request for chat, completions and responses (here and in `stream`), one entry
per input item for embeddings (`items`).
"""

from __future__ import annotations

import orjson

from proxy.core.apis.base import Adapter, GenerationAdapter, Usage
from proxy.core.apis.embeddings import EmbeddingsAdapter
from proxy.core.keys import cache_key
from proxy.core.validation import parse_json_object
from proxy.errors import StoreUnavailable
from proxy.service.follower import Follower
from proxy.service.items import ItemFlow
from proxy.service.replay import Replay
from proxy.service.request import ProxyRequest, Reply
from proxy.service.request_memo import Keyed, RequestMemo
from proxy.service.stages import Stages
from proxy.service.stream import StreamingMiss
from proxy.service.tracing import call_ended, call_failed, call_responded, call_started, span


class Pipeline:
    """Serves every cached endpoint for one config generation (a reload builds a new one)."""

    def __init__(self, stages: Stages, memo: RequestMemo | None = None) -> None:
        self.stages = stages
        # What repeated request bytes resolve to (this config generation's: a reload builds
        # a new Pipeline); `RequestMemo(0)` remembers nothing.
        self._memo = RequestMemo() if memo is None else memo
        self._follower = Follower(stages)
        self._streaming = StreamingMiss(stages)
        self._items = ItemFlow(stages, self._follower)
        self._replay = Replay(stages)

    async def answer(self, api: Adapter, req: ProxyRequest, raw: bytes) -> Reply:
        """Answer one request; `req` records what happened (headers and stats read it)."""
        if isinstance(api, EmbeddingsAdapter):
            self.stages.prepare(api, req, raw)
            reply = await self._items.answer(api, req)
        else:
            assert isinstance(api, GenerationAdapter)
            self._resolve(api, req, raw)
            reply = await self._generate(api, req)
        if req.tenant.budget is not None:
            await self.stages.view_budgets(req)  # a hit passed no limiter: its x-budget-* headers
        return reply

    def _resolve(self, api: GenerationAdapter, req: ProxyRequest, raw: bytes) -> None:
        """Parse, validate, key: `Stages.prepare` and the digest, or what they made of the
        same bytes (same endpoint, tenant and cache headers) before."""
        memo_key = (api, req.tenant.name, req.meta, raw)
        known = self._memo.get(memo_key)
        if known is None:
            stages = self.stages
            model = stages.prepare(api, req, raw)
            digest = api.digest(req.body, model)
            key = cache_key(stages.config.redis.key_prefix, stages.namespace(req), api.key_kind, digest)
            known = Keyed(model, req.controls, req.stream, digest, key, api.include_usage(req.body))
            self._memo.put(memo_key, known)
        else:
            req.api, req.model, req.body = api, known.model, parse_json_object(raw)
            req.record.model = known.model.name
            req.controls, req.stream = known.controls, known.stream
        req.digest = req.flight_digest = req.record.digest = known.digest
        req.key, req.include_usage = known.key, known.include_usage

    async def _generate(self, api: GenerationAdapter, req: ProxyRequest) -> Reply:
        stages = self.stages
        assert req.model is not None
        if req.controls.lookup:
            try:
                with span(req.trace, "llmcp.cache.lookup"):
                    entry = await stages.cache.get(req.key)
                req.looked_up()
            except StoreUnavailable:
                entry = None
                req.record.redis_error = True
            if entry is not None:
                if req.tenant.limit_cache_hits and req.tenant.cache_mode != "replay":
                    used = (entry.prompt_tokens, entry.completion_tokens)
                    await stages.limit(req, lambda: used, settle=False)
                return stages.hit_reply(api, req, entry)
        if req.tenant.cache_mode == "replay":  # record & replay: a miss never goes upstream (no limits)
            raise await self._replay.miss(api, req)

        async def recheck() -> Reply | None:
            entry = await stages.cache.get(req.key)
            return None if entry is None else stages.hit_reply(api, req, entry)

        if stages.wants_flight(req):
            shared = await stages.single_flight(req, recheck, self._follower.follow)
            if shared is not None:
                return shared
        try:
            await stages.limit(req, lambda: self._estimate(api, req), ceiling=lambda: self._ceiling(api, req))
            if req.stream:
                return await self._streaming.start(api, req)
            return await self._miss(api, req)
        except BaseException:
            await stages.finish_flight(req, False)
            raise

    def _estimate(self, api: GenerationAdapter, req: ProxyRequest) -> Usage:
        """What to reserve: the prompt's estimate and the completion allowance (x n)."""
        assert req.model is not None
        req.prompt_estimate = api.prompt_tokens(req.body, req.model)
        return req.prompt_estimate, api.completion_allowance(
            req.body, self.stages.config.rate_limit.default_max_tokens
        )

    def _ceiling(self, api: GenerationAdapter, req: ProxyRequest) -> Usage:
        """What a budget reserves: the prompt's estimate and every completion token the answer
        can have (the client's cap x n, else the model's most x n). Called after `_estimate`."""
        assert req.model is not None
        return req.prompt_estimate, api.completion_allowance(req.body, self.stages.max_output(req.model))

    async def _miss(self, api: GenerationAdapter, req: ProxyRequest) -> Reply:
        stages = self.stages
        assert req.model is not None
        upstream = stages.upstreams.for_model(req.model, api)
        call_started(req.trace, req.model, req.body, False)
        try:
            response = await upstream.complete(req.model, stages.forwarded_body(req), api)
        except BaseException as exc:
            stages.settle_failure(req, exc)
            call_failed(req.trace, exc)
            raise
        usage, cached = api.usage_of(response), api.cached_tokens_of(response)
        # Settled first (nothing below may skip it); an answer that reports no usage is
        # charged its prompt estimate and the tokens of what it returned.
        stages.settle(req, api.charged_usage(req.body, req.model, response), cached)
        req.answered_upstream()  # counted once the upstream answered
        call_responded(req.trace, response)
        call_ended(req.trace, usage)
        req.note_usage(usage, cached)
        body = orjson.dumps(response)

        async def store() -> None:
            # After the answer is sent: the client does not wait for this round trip. Its
            # command is written before the server reads another request (the lane keeps
            # order), so a request that follows this answer finds it stored; one already
            # waiting is this flight's follower until the release.
            stored = False
            try:
                stored = api.is_whole(req.body, response) and await stages.store(req, response, body, usage)
            finally:
                await stages.finish_flight(req, stored)

        return Reply(body, then=store)
