"""The one log line per proxied request: request id, tenant, model, cache status, HTTP
status, latency and upstream tokens. Never the API key, and never the prompt unless
`server.log_prompts` is on."""

from __future__ import annotations

import logging
import time

from proxy.stats.schema import RequestRecord

access = logging.getLogger("llmcp.access")


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
