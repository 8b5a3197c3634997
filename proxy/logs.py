"""Logging setup: `server.log_format: json` writes every record as one JSON object (for log
shippers); `text` keeps the usual human format. The per-request access line is written
by `proxy.http.access_log`."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

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
