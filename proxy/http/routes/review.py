"""HTTP side of the review queue: clients flag, reviewers list and decide.

Who may do what:
- flag (`POST /v1/cache/flags`): a tenant key, for its own entries; an admin key, naming
  the tenant.
- list, read and decide (`/admin/review...`): admin keys for every tenant; a tenant key for
  its own tenant's items. With `cache.scope: shared` the entries belong to nobody, so only
  admins may read or decide (a tenant may still flag a shared answer).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fastapi import APIRouter, Request, Response

from proxy.config import Config
from proxy.core.keys import digest_in
from proxy.core.validation import parse_json_object
from proxy.errors import Conflict, InvalidRequest, PermissionDenied, RouteNotFound
from proxy.http.auth import authenticate_tenant, bearer_token, is_admin
from proxy.http.routes import bounded_body, json_response, runtime_of
from proxy.store.review import DECISIONS

router = APIRouter()
_DIGEST = re.compile(r"[0-9a-f]{64}")
_MAX_REASON = 1000
_MAX_LIMIT = 1000
_ANSWER_FIELDS = frozenset({"answer", "request"})


class Caller:
    """The key behind a request: an admin, or one tenant."""

    def __init__(self, config: Config, authorization: str | None) -> None:
        self.admin = is_admin(config, authorization)
        self.tenant = None if self.admin else authenticate_tenant(config, authorization).name
        self._config = config
        fingerprint = hashlib.sha256(bearer_token(authorization).encode()).hexdigest()[:8]
        # Recorded with decisions: which key decided, never the key itself.
        self.identity = f"admin:{fingerprint}" if self.admin else f"tenant:{self.tenant}"

    def namespace_to_flag(self, wanted: Any) -> str:
        if self.admin:
            return self._known(wanted)
        if wanted is not None and wanted != self.tenant:
            raise PermissionDenied("A tenant key can only flag its own tenant's answers.", param="tenant")
        assert self.tenant is not None
        return self._config.cache.namespace(self.tenant)

    def namespaces_to_read(self, wanted: str | None) -> list[str]:
        """Namespaces whose review items this key may see or decide."""
        if self.admin:
            if wanted is not None:
                return [self._known(wanted)]
            if self._config.cache.scope == "shared":
                return ["shared"]
            return [t.name for t in self._config.tenants]
        if wanted is not None and wanted != self.tenant:
            raise PermissionDenied("A tenant key can only see its own tenant's review items.")
        if self._config.cache.scope != "tenant":
            raise PermissionDenied("With cache.scope 'shared', only admin keys may review answers.")
        assert self.tenant is not None
        return [self.tenant]

    def _known(self, wanted: Any) -> str:
        if not isinstance(wanted, str):
            raise InvalidRequest("Name the tenant ('tenant') whose answer this is.", param="tenant")
        if self._config.cache.scope == "shared":
            return "shared"
        if wanted not in self._config.tenant_index:
            raise RouteNotFound(f"No tenant named {wanted!r}.")
        return wanted


def _digest(value: Any) -> str:
    """The X-Cache-Key digest (a whole cache key is accepted too)."""
    text = digest_in(value) if isinstance(value, str) else ""
    if not _DIGEST.fullmatch(text):
        raise InvalidRequest("'key' must be the X-Cache-Key of a cached answer (64 hex digits).", param="key")
    return text


def _reason(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > _MAX_REASON:
        raise InvalidRequest(
            f"'reason' must be a string of at most {_MAX_REASON} characters.", param="reason"
        )
    return value


@router.post("/v1/cache/flags")
async def flag(request: Request) -> Response:
    runtime = runtime_of(request)
    caller = Caller(runtime.config, request.headers.get("authorization"))
    body = parse_json_object(await bounded_body(request))
    digest = _digest(body.get("key"))
    reason = _reason(body.get("reason"))
    namespace = caller.namespace_to_flag(body.get("tenant"))
    marked = await runtime.review.flag(namespace, digest, reason, caller.tenant or caller.identity)
    if marked.outcome == "missing":
        raise RouteNotFound(
            f"No cached answer with key {digest} for this tenant (it may have expired or been purged).",
            param="key",
            code="cache_entry_not_found",
        )
    quarantined = runtime.config.review.on_flag == "quarantine"
    return json_response(
        {
            "object": "cache.flag",
            "key": digest,
            "tenant": namespace,
            "flags": marked.flags,
            "queued": marked.outcome == "queued",
            "action": "quarantined" if quarantined else "kept",
        },
        201 if marked.outcome == "queued" else 200,
    )


def _include(value: str | None) -> set[str]:
    wanted = {p.strip() for p in (value or "").split(",") if p.strip()}
    if wanted - _ANSWER_FIELDS:
        raise InvalidRequest("'include' takes a list of: answer, request.", param="include")
    return wanted


@router.get("/admin/review")
async def list_review(request: Request, tenant: str | None = None, limit: int = 50) -> Response:
    runtime = runtime_of(request)
    namespaces = Caller(runtime.config, request.headers.get("authorization")).namespaces_to_read(tenant)
    if not 1 <= limit <= _MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {_MAX_LIMIT}.", param="limit")
    items: list[dict[str, Any]] = []
    queues = {}
    for ns in namespaces:
        pending, total, dropped = await runtime.review.pending(ns, limit)
        items.extend(pending)
        queues[ns] = {"pending": total, "dropped": dropped}
    items.sort(key=lambda i: i["created_at"] or 0)
    return json_response({"object": "list", "data": items[:limit], "queues": queues})


@router.get("/admin/review/{digest}")
async def get_review_item(
    request: Request, digest: str, tenant: str | None = None, include: str | None = None
) -> Response:
    runtime = runtime_of(request)
    namespaces = Caller(runtime.config, request.headers.get("authorization")).namespaces_to_read(tenant)
    key, parts = _digest(digest), _include(include)
    for ns in namespaces:
        (item,) = await runtime.review.items(ns, [key], "answer" in parts, "request" in parts)
        if item is not None:
            return json_response(item)
    raise RouteNotFound(f"No review item {key}.", code="review_item_not_found")


@router.post("/admin/review/{digest}/decision")
async def decide(request: Request, digest: str) -> Response:
    runtime = runtime_of(request)
    config = runtime.config
    caller = Caller(config, request.headers.get("authorization"))
    body = parse_json_object(await bounded_body(request))
    key = _digest(digest)
    decision = body.get("decision")
    if decision not in DECISIONS:
        raise InvalidRequest("'decision' must be one of: approve, reject, pin.", param="decision")
    wanted = body.get("tenant")
    if wanted is not None and not isinstance(wanted, str):
        raise InvalidRequest("'tenant' must be a string.", param="tenant")
    if caller.admin and wanted is None:
        raise InvalidRequest("Name the tenant ('tenant') whose item this is.", param="tenant")
    (namespace,) = caller.namespaces_to_read(wanted)
    ttl = body.get("ttl_seconds")
    if ttl is not None and (
        decision != "pin" or type(ttl) is not int or not 1 <= ttl <= config.review.pin_max_seconds
    ):
        raise InvalidRequest(
            f"'ttl_seconds' is for pin only, 1 to {config.review.pin_max_seconds} (review.pin_max_seconds).",
            param="ttl_seconds",
        )
    reviewer = body.get("reviewer")
    if reviewer is not None and (not isinstance(reviewer, str) or not 0 < len(reviewer) <= 100):
        raise InvalidRequest("'reviewer' must be a name of 1 to 100 characters.", param="reviewer")
    who = f"{reviewer} ({caller.identity})" if reviewer else caller.identity
    result = await runtime.review.decide(namespace, key, decision, who, ttl)
    if result.outcome == "missing":
        raise RouteNotFound(f"No review item {key} for tenant {namespace!r}.", code="review_item_not_found")
    if result.outcome == "decided":
        raise Conflict(f"Review item {key} was decided already ({result.state}).", code="already_decided")
    if result.outcome == "gone":
        raise Conflict(
            "The answer under review has expired, so it cannot be pinned; approve or reject it.",
            code="answer_expired",
        )
    (item,) = await runtime.review.items(namespace, [key])
    return json_response(item)
