"""How an error becomes an HTTP response: the one mapping, used by the FastAPI handlers
and by the raw ASGI chat endpoint alike."""

from __future__ import annotations

import logging

import orjson

from proxy.errors import ModelNotConfigured, ProxyError, ServiceUnavailable, StoreUnavailable

log = logging.getLogger("llmcp")
JSON = "application/json"


def error_parts(exc: BaseException) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) in the OpenAI error shape; unexpected errors become a plain
    500 that says nothing about the internals (the traceback goes to the log)."""
    if isinstance(exc, StoreUnavailable):  # only endpoints that cannot work without Redis let it out
        log.warning("redis unavailable: %s", exc)
        exc = ServiceUnavailable(
            "The cache store (Redis) is unavailable; try again shortly.", headers={"Retry-After": "1"}
        )
    if not isinstance(exc, ProxyError):
        log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
        exc = ProxyError("The proxy hit an internal error. It has been logged.")
    headers = exc.headers
    if isinstance(exc, ModelNotConfigured):  # no retry helps until the operator sets the key
        headers = {**headers, "x-should-retry": "false"}
    return exc.status, headers, orjson.dumps(exc.body())
