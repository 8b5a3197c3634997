"""The stages every cached endpoint goes through, shared by the generation flow
(`proxy.service.pipeline`), the streaming leader (`stream`), the per-item flow (`items`)
and the single-flight follower (`follower`): prepare (parse, validate, model, cache
controls), single flight, limit, store. Each stage is written once, so the endpoints
cannot drift apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.config import Config, ModelConfig
from proxy.core.apis.base import Adapter, GenerationAdapter, Usage
from proxy.core.cache_controls import CacheControls, CacheStatus, cache_controls
from proxy.core.prices import FREE, Prices, max_output_tokens, model_prices
from proxy.core.validation import parse_json_object
from proxy.errors import ModelHasNoPrice, ModelNotFound, StoreUnavailable, UpstreamTimeout
from proxy.service.request import SSE, ProxyRequest, Reply
from proxy.service.tracing import span
from proxy.store.cache import CacheStore, Entry, decode_entry
from proxy.store.flight import Flight, SingleFlight
from proxy.store.ratelimit import RateLimiter
from proxy.store.review import ReviewQueue, is_sampled
from proxy.upstream.selector import Upstreams

log = logging.getLogger("llmcp.service")
Recheck = Callable[[], Awaitable[Reply | None]]
Follow = Callable[[ProxyRequest, Flight, Recheck], Awaitable[Reply | None]]


class Stages:
    """The collaborators of one config generation and the stages built on them."""

    def __init__(
        self,
        config: Config,
        cache: CacheStore,
        upstreams: Upstreams,
        limiter: RateLimiter,
        flight: SingleFlight,
        review: ReviewQueue,
    ) -> None:
        self.config = config
        self.cache = cache
        self.upstreams = upstreams
        self.limiter = limiter
        self.flight = flight
        self.review = review
        self._background: set[asyncio.Task[None]] = set()
        self._prices: dict[str, Prices | None] = {}
        self._max_output: dict[str, int | None] = {}

    def prices(self, model: ModelConfig) -> Prices | None:
        """The model's prices (None: nothing prices it), looked up once per config."""
        if model.name not in self._prices:
            self._prices[model.name] = model_prices(model)
        return self._prices[model.name]

    def namespace(self, req: ProxyRequest) -> str:
        return self.config.cache.namespace(req.tenant.name)

    def prepare(self, api: Adapter, req: ProxyRequest, raw: bytes) -> ModelConfig:
        """Parse, validate, resolve the model and the cache controls, the same for every
        endpoint (`Cache-Control`, `X-Cache-TTL` and the TTL caps included)."""
        body = parse_json_object(raw)
        name = body.get("model")
        model = self.config.model_index.get(name) if isinstance(name, str) else None
        if model is not None:
            req.record.model = model.name  # so a bad request is counted against its model
        api.check(body)
        if model is None:
            raise ModelNotFound(
                f"The model '{body['model']}' does not exist or you do not have access to it.",
                param="model",
            )
        if req.tenant.budget is not None and self.prices(model) is None:
            raise ModelHasNoPrice(
                f"The model '{model.name}' has no price, and this tenant's spend is held to a budget: "
                "the operator must set input_cost_per_token and output_cost_per_token for it in the "
                "proxy's config.",
                param="model",
            )
        controls = cache_controls(req.meta, self.config, req.tenant, model)
        if api.uncacheable(body):
            controls = CacheControls(lookup=False, store=False, ttl=controls.ttl)
        req.api, req.model, req.body, req.controls = api, model, body, controls
        req.stream = body.get("stream") is True
        return model

    def forwarded_body(self, req: ProxyRequest) -> dict[str, Any]:
        """The body a miss sends upstream: the client's, plus a `prompt_cache_key` derived
        from the tenant (and end user) when `cache.provider_prompt_cache_key` asks for one,
        the provider speaks the OpenAI API, the endpoint takes the field and the client
        set none. Salted and hashed: the provider never learns tenant or user names."""
        mode = self.config.cache.provider_prompt_cache_key
        api, model = req.api, req.model
        if (
            mode == "off"
            or model is None
            or api is None
            or not model.speaks_openai
            or "prompt_cache_key" not in api.fields
            or "prompt_cache_key" in req.body
        ):
            return req.body
        parts = [self.config.cache.provider_prompt_cache_salt, req.tenant.name]
        if mode == "end_user" and req.end_user:
            parts.append(req.end_user)
        digest = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()
        return {**req.body, "prompt_cache_key": f"llmcp-{digest[:40]}"}

    def wants_flight(self, req: ProxyRequest) -> bool:
        """Only a miss that will be stored can be shared: followers read the stored answer."""
        return req.status == CacheStatus.MISS and req.controls.store and self.flight.enabled

    async def single_flight(self, req: ProxyRequest, recheck: Recheck, follow: Follow) -> Reply | None:
        """Lead (returns None: go upstream) or follow another request's identical miss.
        `recheck` answers from the cache if the answer is there now; `follow` is the
        follower's side (`proxy.service.follower`)."""
        # When the flight is keyed like the entry (one answer per request), the script looks
        # at the entry first: a leader that just finished may have stored the answer since
        # our lookup, and that recheck then costs no round trip of its own.
        entry_key = req.key if req.flight_digest == req.digest else None
        try:
            flight = await self.flight.join(self.namespace(req), req.flight_digest, req.stream, entry_key)
        except StoreUnavailable:
            return None
        if flight.cached is not None:
            entry = decode_entry(flight.cached)
            assert isinstance(req.api, GenerationAdapter)
            return None if entry is None else self.hit_reply(req.api, req, entry)
        if not flight.leader:
            with span(req.trace, "llmcp.single_flight.wait"):
                return await follow(req, flight, recheck)
        req.flight = flight
        if entry_key is not None:
            return None
        try:
            reply = await recheck()
        except StoreUnavailable:
            return None
        except BaseException:  # cancelled, say: never leave the lock to its heartbeat
            await self.finish_flight(req, False)
            raise
        if reply is not None:
            await self.finish_flight(req, True)
        return reply

    async def finish_flight(self, req: ProxyRequest, stored: bool) -> None:
        """Release this request's flight once; shielded so a cancelled request still wakes its followers."""
        flight, req.flight = req.flight, None
        if flight is not None:
            await asyncio.shield(self.flight.finish(flight, stored))

    async def limit(
        self,
        req: ProxyRequest,
        estimate: Callable[[], Usage],
        settle: bool = True,
        ceiling: Callable[[], Usage] | None = None,
    ) -> None:
        """Reserve from the tenant's buckets and budgets in one call (raises RateLimited or
        BudgetExceeded). `estimate` (prompt tokens, completion tokens to reserve) is called
        only when a token bucket or a budget needs it; a budget reserves the cost of
        `ceiling` instead when given (the most the answer can cost: every completion token
        the model can send when the client set no cap). `settle=False` for cache hits: they
        take tokens (limit_cache_hits) but cost no money."""
        assert req.model is not None
        buckets = self.limiter.plan(req.tenant, req.model.name, req.end_user)
        budgets = self.limiter.plan_budgets(req.tenant, req.end_user) if req.tenant.budget else ()
        if not buckets and not budgets:
            return
        wants_tokens = any(b.kind == "tokens" for b in buckets)
        prompt, completion = estimate() if wants_tokens or (budgets and settle) else (0, 0)
        amount = 0
        if budgets and settle:
            most = ceiling() if ceiling is not None else (prompt, completion)
            amount = (self.prices(req.model) or FREE).cost_nano(*most)
        now = self.limiter.clock()
        with span(req.trace, "llmcp.ratelimit"):
            reservation = await self.limiter.acquire(
                buckets, prompt + completion, budgets=budgets, amount=amount
            )
        if reservation is None:
            req.record.limiter_error = True
            return
        req.rate = reservation
        if budgets:
            req.budget_view = (budgets, list(reservation.spent), now)
        if settle:
            req.reservation = reservation

    def max_output(self, model: ModelConfig) -> int:
        """The most completion tokens one answer of `model` can have, for a budget's worst
        case: config.yaml's or the price map's, else rate_limit.default_max_tokens."""
        if model.name not in self._max_output:
            self._max_output[model.name] = max_output_tokens(model)
        return self._max_output[model.name] or self.config.rate_limit.default_max_tokens

    def settle(self, req: ProxyRequest, usage: Usage | None, cached: int = 0) -> None:
        """Settle the request's reservation with what the answer used (None: nothing, the
        call failed), `cached` prompt tokens at the provider's cached price."""
        reservation = req.reservation
        if reservation is None:
            return
        req.reservation = None  # once
        prompt, completion = usage or (0, 0)
        cost = 0
        if reservation.budgets and req.model is not None:
            cost = (self.prices(req.model) or FREE).cost_nano(prompt, completion, cached)
            if req.budget_view is not None:  # the headers show the spend after settling
                budgets, spent, now = req.budget_view
                req.budget_view = (budgets, [s - reservation.amount + cost for s in spent], now)
        self.limiter.settle(reservation, prompt + completion, cost)

    def settle_failure(self, req: ProxyRequest, exc: BaseException) -> None:
        """Settle after the upstream call failed. A provider that answered with an error, or
        could not be reached, billed nothing: everything is given back. A timeout or a
        cancelled call may have been billed in full (the provider kept generating): the
        reservation is kept, its worst case charged."""
        if isinstance(exc, (UpstreamTimeout, asyncio.CancelledError)) and req.reservation is not None:
            req.reservation = None
            log.info("upstream call %s: its reservation is kept", type(exc).__name__)
            return
        self.settle(req, None)

    async def view_budgets(self, req: ProxyRequest) -> None:
        """The x-budget-* headers of a request that passed no limiter (a cache hit): the
        spend this process last saw, read once when it has seen none; refreshed in the
        background when a few seconds old. Never fails the request."""
        if req.tenant.budget is None or req.budget_view is not None:
            return
        budgets = self.limiter.plan_budgets(req.tenant, req.end_user)
        spent, stale = self.limiter.known_spent(budgets)
        try:
            if spent is None:
                spent = await self.limiter.read_spent(budgets)
            elif stale:
                self.limiter.refresh_soon(budgets)
        except StoreUnavailable:
            return
        req.budget_view = (budgets, spent, self.limiter.clock())

    def hit_reply(self, api: GenerationAdapter, req: ProxyRequest, entry: Entry) -> Reply:
        """A cached answer as this request wants it (JSON, or replayed as SSE)."""
        req.served_hit(entry.prompt_tokens, entry.completion_tokens, entry.age_seconds())
        if not req.stream:
            return Reply(entry.body)
        return Reply(api.replay(orjson.loads(entry.body), req.include_usage), media_type=SSE)

    async def store(
        self,
        req: ProxyRequest,
        answer: dict[str, Any],
        body: bytes,
        usage: Usage | None,
        doubt: str | None = None,
    ) -> bool:
        """Store a whole answer (`body` is `answer` as served); True when it is now in the
        cache. Not stored, and counted as not cacheable, when `doubt` says why the proxy
        cannot be sure to replay it exactly, or when it expires (`expires_at`) within
        `margin` seconds. Otherwise the entry's TTL never outlives the answer."""
        if not req.controls.store:
            return False
        assert isinstance(req.api, GenerationAdapter) and req.model is not None
        margin = 5  # seconds: clock skew with the provider, and time for the client to use it
        ttl = req.controls.ttl
        expires = req.api.expires_at(answer)
        if expires is not None and doubt is None:
            left = expires - int(time.time()) - margin
            if left <= 0:
                doubt = f"it expires at {expires} (expires_at), in less than {margin}s"
            ttl = min(ttl, left)
        if doubt is not None:
            log.info("answer served but not cached: %s", doubt)
            req.record.not_cacheable = True
            return False
        prompt, completion = usage or (0, 0)
        review = self.config.review
        # A leader's flight ends in the same script that stores its answer (one round trip).
        flight = req.flight if req.flight is not None and req.flight.leader else None
        try:
            if flight is not None:
                await self.flight.settle(flight)
            outcome = await self.cache.put(
                req.key,
                body,
                prompt,
                completion,
                ttl,
                req.model.name,
                orjson.dumps(req.body) if review.keep_prompts or req.controls.keep_request else None,
                self.flight.release_spec(flight) if flight is not None else None,
            )
            if flight is not None and outcome != "too_large":
                req.flight = None  # released by the store script
            if outcome == "stored" and is_sampled(req.digest, review.sample_rate):
                await self.review.sample(self.namespace(req), req.digest, req.api.key_kind)
        except StoreUnavailable:
            return False
        if outcome == "too_large":
            log.info("answer of %d bytes is over cache.max_entry_bytes; not cached", len(body))
        return outcome == "stored"

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for background work (streams finishing for a client that left) at shutdown,
        so their settlements are sent before the limiter drains."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)

    def spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)  # held until done, so it is not garbage-collected mid-way
        task.add_done_callback(self._background.discard)
