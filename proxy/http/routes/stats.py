"""The read side: /stats (JSON or the HTML page), /stats/ui, /stats/events, /metrics.
Admin keys see every tenant; a tenant key only its own."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request, Response

from proxy.errors import InvalidRequest
from proxy.http.auth import require_admin, visible_tenants
from proxy.http.routes import json_response, runtime_of
from proxy.service.runtime import Runtime
from proxy.stats.prometheus import render
from proxy.stats.schema import PROXY_TENANT

router = APIRouter()
_MAX_EVENTS = 1000


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept


def stats_page() -> Response:
    html = files("proxy.http").joinpath("static", "stats.html").read_bytes()
    return Response(html, media_type="text/html; charset=utf-8")


async def build_report(runtime: Runtime, tenants: list[str], admin: bool) -> dict[str, Any]:
    await runtime.stats.flush()  # this process's latest requests count too
    report = await runtime.report.snapshot(tenants + ([PROXY_TENANT] if admin else []))
    namespaces = list(tenants)
    if admin and runtime.config.cache.scope == "shared":
        namespaces.append("shared")
    report["cache"] = await runtime.report.footprint(namespaces)
    report["budgets"] = await runtime.budget_status(tenants)
    report["scope"] = "admin" if admin else f"tenant:{tenants[0]}"
    return report


@router.get("/stats")
async def stats(request: Request, tenant: str | None = None) -> Response:
    if _wants_html(request) and "authorization" not in request.headers:
        return stats_page()
    runtime = runtime_of(request)
    tenants, admin = visible_tenants(runtime.config, request.headers.get("authorization"), tenant)
    if _wants_html(request):
        return stats_page()
    return json_response(await build_report(runtime, tenants, admin))


@router.get("/stats/ui")
async def stats_ui() -> Response:
    """The page itself holds no data: it asks /stats with the key the user gives it."""
    return stats_page()


@router.get("/stats/events")
async def stats_events(request: Request, limit: int = 100) -> Response:
    runtime = runtime_of(request)
    require_admin(runtime.config, request.headers.get("authorization"))
    if not 1 <= limit <= _MAX_EVENTS:
        raise InvalidRequest(f"limit must be between 1 and {_MAX_EVENTS}.", param="limit")
    await runtime.stats.flush()
    data = await runtime.report.recent_events(limit)
    return json_response({"object": "list", "data": data})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    runtime = runtime_of(request)
    require_admin(runtime.config, request.headers.get("authorization"))
    await runtime.stats.flush()
    tenants = [t.name for t in runtime.config.tenants]
    figures = await runtime.report.all_time([*tenants, PROXY_TENANT])
    footprint = await runtime.report.footprint([*tenants, "shared"])
    body = render(figures, footprint)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
