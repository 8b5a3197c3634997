"""The pipeline for per-item endpoints (embeddings): one cache entry per input item.

The same stages as every endpoint (`Stages`: cache controls, single flight, limit,
store), applied per item: one MGET looks every item up; only the missing items are
limited, sent upstream (one call, split only past the model's batch size) and stored;
the answer lists every item in input order. `X-Cache` is HIT (every item cached), MISS
(none), PARTIAL, or BYPASS (`Cache-Control: no-cache`, or Redis unavailable).
"""

from __future__ import annotations

import hashlib
import time

from proxy.core.apis.embeddings import (
    EmbeddingRequest,
    EmbeddingsAdapter,
    le_floats,
    pack_vector,
    unpack_vector,
)
from proxy.core.keys import cache_key
from proxy.errors import StoreUnavailable
from proxy.service.follower import Follower
from proxy.service.replay import Replay
from proxy.service.request import ProxyRequest, Reply
from proxy.service.stages import Stages
from proxy.service.tracing import call_ended, call_failed, call_started, span


class ItemFlow:
    def __init__(self, stages: Stages, follower: Follower) -> None:
        self._stages = stages
        self._follower = follower
        self._replay = Replay(stages)

    async def answer(self, api: EmbeddingsAdapter, req: ProxyRequest) -> Reply:
        stages = self._stages
        model = req.model
        assert model is not None
        parsed = api.parse(req.body, model)
        prefix, namespace = stages.config.redis.key_prefix, stages.namespace(req)
        keys = [
            cache_key(prefix, namespace, api.key_kind, api.item_digest(model, parsed.keyed, item))
            for item in parsed.items
        ]
        found: list[bytes | None] = [None] * len(keys)
        saved = 0
        if req.controls.lookup:
            try:
                with span(req.trace, "llmcp.cache.lookup"):
                    values = await stages.cache.get_items(keys)
                saved = self._fill(found, range(len(keys)), values)
                req.looked_up()
            except StoreUnavailable:
                req.record.redis_error = True
        missing = [i for i, v in enumerate(found) if v is None]
        req.item_hits = (len(keys) - len(missing), len(keys))
        if not missing:
            return self._hit(api, req, parsed, found, saved)
        if req.tenant.cache_mode == "replay":  # record & replay: a miss never goes upstream (no limits)
            raise await self._replay.items_miss(api, req, parsed, missing)

        async def recheck() -> Reply | None:
            """Items the leader stored since our lookup; the answer once all are there."""
            nonlocal saved
            values = await stages.cache.get_items([keys[i] for i in missing])
            saved += self._fill(found, missing, values)
            if any(v is None for v in found):
                return None
            req.item_hits = (len(keys), len(keys))
            return self._hit(api, req, parsed, found, saved)

        if stages.wants_flight(req):
            joined = "\n".join(keys[i] for i in missing).encode()
            req.flight_digest = hashlib.sha256(joined).hexdigest()
            shared = await stages.single_flight(req, recheck, self._follower.follow)
            if shared is not None:
                return shared
            missing = [i for i, v in enumerate(found) if v is None]
            req.item_hits = (len(keys) - len(missing), len(keys))
        # An input repeated in the batch goes upstream once (same key, same vector).
        firsts: dict[str, int] = {}
        for i in missing:
            firsts.setdefault(keys[i], i)
        todo = list(firsts.values())
        try:
            await stages.limit(req, lambda: (sum(parsed.tokens[i] for i in todo), 0))
            used, stored = await self._fetch(req, parsed, keys, todo, found)
            for i in missing:
                found[i] = found[firsts[keys[i]]]
        except BaseException:
            await stages.finish_flight(req, False)
            raise
        await stages.finish_flight(req, stored)
        req.answered_upstream(partial=len(missing) < len(keys))
        req.record.saved_tokens, req.record.prompt_tokens = saved, used
        return Reply(api.answer(model.name, [v for v in found if v is not None], parsed.base64, used))

    @staticmethod
    def _fill(found: list[bytes | None], where: range | list[int], values: list[bytes | None]) -> int:
        """Put readable cached vectors in place; returns the tokens they saved."""
        saved = 0
        for i, value in zip(where, values, strict=True):
            unpacked = unpack_vector(value) if value is not None else None
            if unpacked is not None:
                found[i], saved = unpacked[0], saved + unpacked[1]
        return saved

    @staticmethod
    def _hit(
        api: EmbeddingsAdapter,
        req: ProxyRequest,
        parsed: EmbeddingRequest,
        found: list[bytes | None],
        saved: int,
    ) -> Reply:
        assert req.model is not None
        req.served_hit(0, 0, None)
        req.record.saved_tokens = saved
        return Reply(api.answer(req.model.name, [v for v in found if v is not None], parsed.base64, 0))

    async def _fetch(
        self,
        req: ProxyRequest,
        parsed: EmbeddingRequest,
        keys: list[str],
        missing: list[int],
        found: list[bytes | None],
    ) -> tuple[int, bool]:
        """Embed the `missing` items upstream (in batches), store them, fill `found`;
        returns (tokens used, whether every item is now stored)."""
        stages = self._stages
        model, api = req.model, req.api
        assert model is not None and isinstance(api, EmbeddingsAdapter)
        upstream = stages.upstreams.for_model(model, api)
        used, charged, stored = 0, 0, req.controls.store
        batch = model.embedding_batch_size
        call_started(req.trace, model, parsed.params, False)
        try:
            for start in range(0, len(missing), batch):
                part = missing[start : start + batch]
                vectors, tokens = await upstream.embed(model, [parsed.items[i] for i in part], parsed.params)
                used += tokens
                charged += tokens or sum(parsed.tokens[i] for i in part)  # no usage: the estimate
                now_ms = int(time.time() * 1000)
                floats = [le_floats(v) for v in vectors]
                packed = [pack_vector(f, parsed.tokens[i], now_ms) for i, f in zip(part, floats, strict=True)]
                for i, value in zip(part, floats, strict=True):
                    found[i] = value
                if req.controls.store:
                    stored = await self._store([keys[i] for i in part], packed, req.controls.ttl) and stored
                    if req.controls.keep_request:  # record mode: each item's request beside it (fixtures)
                        items = [parsed.items[i] for i in part]
                        await self._replay.keep_items(req, [keys[i] for i in part], items, parsed.keyed)
        except BaseException as exc:
            if charged:  # batches before the failure were answered (and billed)
                stages.settle(req, (charged, 0))
            stages.settle_failure(req, exc)
            call_failed(req.trace, exc)
            raise
        stages.settle(req, (charged, 0))
        call_ended(req.trace, (used, 0))
        return used, stored

    async def _store(self, keys: list[str], values: list[bytes], ttl: int) -> bool:
        """True when every item was written (the answer is served either way)."""
        try:
            return await self._stages.cache.put_items(keys, values, ttl) == len(keys)
        except StoreUnavailable:
            return False
