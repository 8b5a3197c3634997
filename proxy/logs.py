"""Logging setup, and the one log line per proxied request.

`server.log_format: json` writes every record as one JSON object (for log shippers);
`text` keeps the usual human format. The request line carries the request id, tenant,
model, cache status, HTTP status, latency and upstream tokens: never the API key, and
never the prompt unless `server.log_prompts` is on (the pipeline does not pass it here).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from proxy.stats.recorder import RequestRecord

access = logging.getLogger("llmcp.access")
_FIELDS = ("request_id", "tenant", "model", "cache", "status", "latency_ms", "tokens", "error", "path")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def log_config(level: str, fmt: str, access_log: bool = True) -> dict[str, Any]:
    """One dictConfig for the CLI process and every uvicorn worker (workers are new
    processes: only what uvicorn applies from log_config reaches them)."""
    level = level.upper()
    formatter: dict[str, Any] = (
        {"()": "proxy.logs.JsonFormatter"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"main": {"class": "logging.StreamHandler", "formatter": "main"}},
        "root": {"handlers": ["main"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": ["main"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["main"], "level": level, "propagate": False},
            "llmcp.access": {"level": level if access_log else "WARNING"},
        },
    }


def log_request(record: RequestRecord, request_id: str, path: str, status: int) -> None:
    """One line per proxied request (INFO; off when the level is higher)."""
    if not access.isEnabledFor(logging.INFO):
        return
    latency_ms = round((time.perf_counter() - record.started) * 1000, 2)
    fields = {
        "request_id": request_id,
        "tenant": record.tenant,
        "model": record.model,
        "cache": record.cache or "-",
        "status": status,
        "latency_ms": latency_ms,
        "tokens": record.prompt_tokens + record.completion_tokens,
        "error": record.error or record.limited or "",
        "path": path,
    }
    message = "%s %s %s %s %s %.1fms"
    args: list[object] = [request_id, record.tenant, record.model, fields["cache"], status, latency_ms]
    if record.prompt is not None:  # only with server.log_prompts: true
        fields["prompt"] = record.prompt
        message += " %s"
        args.append(record.prompt)
    access.info(message, *args, extra=fields)
