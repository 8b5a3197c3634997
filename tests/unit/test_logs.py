"""Structured logs: one JSON object per record, and the request line never carries secrets."""

from __future__ import annotations

import logging

import orjson
import pytest

from proxy.http.access_log import log_request
from proxy.logs import JsonFormatter, log_config
from proxy.stats.schema import RequestRecord


def test_request_line_fields(caplog: pytest.LogCaptureFixture) -> None:
    record = RequestRecord(tenant="acme", model="gpt", cache="HIT", prompt_tokens=3, completion_tokens=4)
    with caplog.at_level(logging.INFO, logger="llmcp.access"):
        log_request(record, "req-1", "/v1/chat/completions", 200)
    [line] = caplog.records
    assert (line.request_id, line.tenant, line.model, line.cache, line.status, line.tokens) == (  # type: ignore[attr-defined]
        "req-1",
        "acme",
        "gpt",
        "HIT",
        200,
        7,
    )
    rendered = orjson.loads(JsonFormatter().format(line))
    assert rendered["logger"] == "llmcp.access" and rendered["request_id"] == "req-1"
    assert rendered["latency_ms"] >= 0


def test_request_line_is_off_above_info(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llmcp.access"):
        log_request(RequestRecord(), "r", "/v1/embeddings", 200)
    assert not caplog.records


def test_log_config_applies_everywhere() -> None:
    config = log_config("info", "json", access_log=False)
    assert config["root"]["handlers"] == ["main"]
    assert config["formatters"]["main"] == {"()": "proxy.logs.JsonFormatter"}
    assert config["loggers"]["llmcp.access"]["level"] == "WARNING"
    assert log_config("debug", "text")["loggers"]["llmcp.access"]["level"] == "DEBUG"


def test_prompts_are_logged_only_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    quiet = RequestRecord(tenant="acme", model="gpt", cache="MISS")
    chatty = RequestRecord(tenant="acme", model="gpt", cache="MISS", prompt='{"messages": "secret plan"}')
    with caplog.at_level(logging.INFO, logger="llmcp.access"):
        log_request(quiet, "req-1", "/v1/chat/completions", 200)
        log_request(chatty, "req-2", "/v1/chat/completions", 200)
    first, second = caplog.records
    assert "secret plan" not in first.getMessage() and not hasattr(first, "prompt")
    assert "secret plan" in second.getMessage() and second.prompt == chatty.prompt  # type: ignore[attr-defined]
