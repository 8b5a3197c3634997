"""Record and replay (`tenants[].cache_mode`), the parts the pipeline calls.

`replay`: a miss never goes upstream. It is answered with 404 `no_recorded_answer`, whose
message names the nearest recorded request of the same tenant, endpoint and model and
the JSON paths where the two differ (`proxy.core.request_diff`), so a developer sees at
once why a test missed. Only a miss in replay mode pays for the search: one SCAN of the
tenant's entries of that endpoint, at most `CANDIDATES` of them, reading the request kept
beside each.

`record`: the cache controls already store with the record TTL and keep each request
(`proxy.core.cache_controls`); per-item answers (embeddings) also keep each item's
request here, so they can be exported as fixtures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from proxy.core.apis.base import Adapter, GenerationAdapter
from proxy.core.apis.embeddings import EmbeddingRequest
from proxy.core.fields import bypass_reason
from proxy.core.fixture_format import ENDPOINT_OF_KIND, item_request
from proxy.core.keys import normalize
from proxy.core.request_diff import Change, diff, distance, render
from proxy.errors import NoRecordedAnswer, ProxyError, ServiceUnavailable, StoreUnavailable
from proxy.service.request import ProxyRequest
from proxy.service.stages import Stages
from proxy.store.fixtures import keep_item_requests, recorded_requests

CANDIDATES = 1000  # recorded entries a replay miss looks at, at most
_TO_RECORD = "Record it with cache_mode: record (or `llm-cache-proxy run --record FILE -- <command>`)."


class Replay:
    def __init__(self, stages: Stages) -> None:
        self._stages = stages

    async def miss(self, api: GenerationAdapter, req: ProxyRequest) -> ProxyError:
        """The error a replay-mode miss of a one-answer endpoint is answered with."""
        model = req.model
        assert model is not None
        if req.record.redis_error:
            return _redis_down()
        head = (
            f"No recorded answer for this request: tenant '{req.tenant.name}' is in replay mode, "
            "which never calls the provider."
        )
        if not req.controls.lookup:
            reason = bypass_reason(api.fields, req.body)
            return NoRecordedAnswer(
                f"{head} This request is never cached (`{reason}` bypasses the cache), "
                "so it cannot be replayed.",
                param=reason,
            )

        def canonical(body: dict[str, Any]) -> Any:
            return normalize(body, model, api.key_kind, api.fields, api.defaults)

        nearest = await self._nearest(req, api, canonical, canonical(req.body))
        return NoRecordedAnswer(f"{head} {nearest} {_TO_RECORD}")

    async def items_miss(
        self, api: Adapter, req: ProxyRequest, parsed: EmbeddingRequest, missing: list[int]
    ) -> ProxyError:
        """The error a replay-mode miss of a per-item endpoint (embeddings) is answered with."""
        model = req.model
        assert model is not None
        if req.record.redis_error:
            return _redis_down()
        first = missing[0]
        named = ", ".join(f"input[{i}]" for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        asked = item_request(model.name, parsed.keyed, parsed.items[first])
        nearest = await self._nearest(req, api, lambda body: body, asked)
        return NoRecordedAnswer(
            f"No recorded answer for {len(missing)} of {len(parsed.items)} inputs ({named}): tenant "
            f"'{req.tenant.name}' is in replay mode, which never calls the provider. For input[{first}]: "
            f"{nearest} {_TO_RECORD}",
            param=f"input[{first}]",
        )

    async def keep_items(
        self, req: ProxyRequest, keys: list[str], items: list[Any], keyed: dict[str, Any]
    ) -> None:
        """Record mode: each item's request beside its vector (best effort, as the store is)."""
        assert req.model is not None
        name = req.model.name
        requests = [item_request(name, keyed, item) for item in items]
        config = self._stages.config
        with contextlib.suppress(StoreUnavailable):
            await keep_item_requests(
                self._stages.cache.gate, keys, requests, req.controls.ttl, config.cache.compress_min_bytes
            )

    async def _nearest(
        self, req: ProxyRequest, api: Adapter, canonical: Callable[[dict[str, Any]], Any], asked: Any
    ) -> str:
        """A sentence on the nearest recorded request and how this one differs from it."""
        stages, model = self._stages, req.model
        assert model is not None
        endpoint = ENDPOINT_OF_KIND[api.key_kind]
        if stages.config.cache.scope == "shared":
            return "(With cache.scope: shared, recorded requests are not shown: they may be other tenants'.)"
        try:
            recorded = await recorded_requests(
                stages.cache.gate,
                stages.config.redis.key_prefix,
                stages.namespace(req),
                api.key_kind,
                model.name,
                CANDIDATES,
            )
        except StoreUnavailable:
            return "(Redis failed while looking for the nearest recorded request.)"
        best: tuple[tuple[int, int, str], list[Change]] | None = None
        for digest, body in recorded.requests:  # the fewest differing paths, then the smallest edits
            changes = diff(canonical(body), asked)
            score = (len(changes), distance(changes), digest)
            if best is None or score < best[0]:
                best = (score, changes)
        searched = f" (only the first {CANDIDATES} recorded entries were searched)" if recorded.capped else ""
        if best is None:
            return f"No {endpoint} request for model '{model.name}' is recorded for this tenant{searched}."
        (count, _, digest), changes = best
        if not changes:
            return (
                f"A recorded request (X-Cache-Key {digest}) has the same key, but its answer is gone "
                f"(expired, evicted or purged){searched}."
            )
        return (
            f"Nearest recorded {endpoint} request for model '{model.name}' (X-Cache-Key {digest}), "
            f"{count} difference{'s' if count > 1 else ''} (recorded -> this request){searched}: "
            f"{render(changes)}."
        )


def _redis_down() -> ProxyError:
    return ServiceUnavailable(
        "The cache store (Redis) is unavailable, and replay mode never calls the provider; "
        "try again shortly.",
        headers={"Retry-After": "1"},
    )
