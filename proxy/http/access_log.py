"""The one access line per request. A proxied request's line has its request id, tenant,
model, cache status, HTTP status, latency and upstream tokens, and for a failure a short
`error` reason (`upstream_unreachable`, `upstream_status_401`, `rate_limited_tokens`,
`bad_request`: `proxy.errors.error_reason`, never the message text, which may hold the
client's input); every other route's has method, path, status and latency. Never the API
key, and never the prompt unless `server.log_prompts` is on. uvicorn's own access logger
stays off: this replaces it."""

from __future__ import annotations

import logging
import time
from typing import Any

from proxy.logs import Line, OffLoopHandler
from proxy.stats.schema import RequestRecord

access = logging.getLogger("llmcp.access")


def log_request(record: RequestRecord, request_id: str, path: str, status: int) -> None:
    """One line per proxied request (INFO; off when the level is higher)."""
    if not access.isEnabledFor(logging.INFO):
        return
    latency_ms = round(record.latency_ms(), 2)
    fields = {
        "request_id": request_id,
        "tenant": record.tenant,
        "model": record.model,
        "cache": record.cache or "-",
        "status": status,
        "latency_ms": latency_ms,
        "tokens": record.prompt_tokens + record.completion_tokens,
        "error": record.reason or record.error or record.limited or "",
        "path": path,
    }
    message = "%s %s %s %s %s %.1fms"
    args: list[object] = [request_id, record.tenant, record.model, fields["cache"], status, latency_ms]
    if fields["error"]:
        message += " error=%s"
        args.append(fields["error"])
    if record.prompt is not None:  # only with server.log_prompts: true
        fields["prompt"] = record.prompt
        message += " %s"
        args.append(record.prompt)
    _write(message, tuple(args), fields)


def logged_send(send: Any, method: str, path: str) -> Any:
    """`send` wrapped to write one access line for a route outside the proxied endpoints,
    when the response starts; `send` itself when the access line is off."""
    if not access.isEnabledFor(logging.INFO):
        return send
    started = time.perf_counter()

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            latency_ms = round((time.perf_counter() - started) * 1000, 2)
            fields = {"path": path, "status": status, "latency_ms": latency_ms}
            _write("%s %s %s %.1fms", (method, path, status, latency_ms), fields)
        await send(message)

    return wrapped


def _write(message: str, args: tuple[object, ...], fields: dict[str, object]) -> None:
    """`access.info(message, *args, extra=fields)` without its search for the calling
    source line (walking the stack was a fifth of an in-process hit; no format shows it),
    and, when the line goes only to the writer thread of `log_config`, without a record."""
    handler = _only_handler()
    if handler is not None:
        handler.line(Line(access.name, time.time(), message, args, fields))
    else:
        access.handle(_record(message, args, fields))


def _only_handler() -> OffLoopHandler | None:
    """The access logger's one handler when it is the writer thread and nothing else sees
    the record (no filter, no propagation, no record factory): as `log_config` sets it."""
    handlers = access.handlers
    if len(handlers) != 1 or access.propagate or access.filters:
        return None
    handler = handlers[0]
    if (
        type(handler) is not OffLoopHandler
        or handler.filters
        or handler.level > logging.INFO
        or logging.getLogRecordFactory() is not logging.LogRecord
    ):
        return None
    return handler


_LOGGING_STARTED: float = vars(logging)["_startTime"]  # what relativeCreated counts from
_blank: dict[str, object] | None = None  # a record's attributes that are the same on every line


def _record(message: str, args: tuple[object, ...], fields: dict[str, object]) -> logging.LogRecord:
    """The record `access.makeRecord` would make, for a fraction of its cost (it was a tenth
    of an L1 hit): every attribute but the clock's is the same on every line, so it is copied
    from a record made once. Only while logging records no thread or process (the log setup,
    `proxy.logs.OffLoopHandler`, turns those off) and no record factory is installed."""
    global _blank
    if (
        logging.logThreads
        or logging.logProcesses
        or logging.logMultiprocessing
        or logging.getLogRecordFactory() is not logging.LogRecord
    ):
        return access.makeRecord(access.name, logging.INFO, "", 0, message, args, None, extra=fields)
    if _blank is None:
        _blank = dict(logging.LogRecord(access.name, logging.INFO, "", 0, "", None, None).__dict__)
    now = time.time()
    record = logging.LogRecord.__new__(logging.LogRecord)
    attributes = record.__dict__
    attributes.update(_blank)
    attributes.update(fields)
    attributes["msg"], attributes["args"] = message, args
    attributes["created"] = now
    attributes["msecs"] = int((now - int(now)) * 1000) + 0.0
    attributes["relativeCreated"] = (now - _LOGGING_STARTED) * 1000
    return record
