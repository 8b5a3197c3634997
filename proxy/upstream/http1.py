"""The direct route's HTTP/1.1 client: pooled keep-alive connections, httptools' parser (C,
the one uvicorn serves with), one socket write per request, one timer per exchange.

A miss on the direct route is one POST to the provider. aiohttp made that about a quarter
of a miss's CPU (request and response objects, cookie jar, tracing hooks, a timer context
per read). What a provider call needs is narrow: a POST with a JSON body, the status, the
headers for errors, and the body whole or as SSE lines.

- Connections are kept per origin, reused most-recent-first; an idle one is closed after
  `keepalive_s` (or when the provider closes it). One connection per call in flight.
- Each call has one deadline for all of it: connecting (at most `connect_s`), sending and
  reading to the end of the body, streamed or not, as aiohttp's `total` timeout did. Past
  it the call raises `TimeoutError` and its connection is closed.
- A connection that fails or closes before its answer is complete raises `CannotConnect`
  or `ServerDisconnected` (both `ConnectionError`). Nothing is retried: a POST to an LLM
  may have been served (and billed).
- gzip and deflate bodies are decompressed as they arrive; any other content-encoding is an
  error (`MalformedAnswer`), never passed on as text.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections.abc import AsyncGenerator
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from proxy.upstream.transport import OpenStream

_READ_AHEAD = 1 << 20  # a streamed body read this far ahead of its reader pauses the socket
Origin = tuple[str, str, int]


class CannotConnect(ConnectionError):
    """No connection to the provider could be made (refused, unknown host, TLS)."""


class ServerDisconnected(ConnectionError):
    """The connection closed before the provider's answer was complete."""


class MalformedAnswer(Exception):
    """The provider's bytes are not an HTTP/1.1 answer this client can read."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one exchange at a time; the parser calls back into it."""

    def __init__(self, origin: Origin, open_set: set[_Connection]) -> None:
        self.origin = origin
        self._open_set = open_set
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.keep_alive = False  # the last answer allows another on this connection
        self.heard = False  # a byte of the answer in progress came in
        self.idle_since = 0.0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self._decoder: Any = None
        self._buffered = 0
        self._paused = False
        self.head: asyncio.Future[None] | None = None  # done at the end of the headers
        self.done: asyncio.Future[None] | None = None  # done at the end of the answer
        self.readable: asyncio.Future[None] | None = None  # a stream's reader waits on it

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._open_set.add(self)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # what a callback raised
            if not isinstance(cause, MalformedAnswer):
                cause = MalformedAnswer(f"malformed answer: {exc}")
            self.fail(cause)

    def eof_received(self) -> bool:
        self._ended_by_close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended_by_close()
        self._open_set.discard(self)

    def _ended_by_close(self) -> None:
        """An answer with neither a length nor chunks ends where the connection does."""
        if (
            self.head is not None
            and self.head.done()
            and "content-length" not in self.headers
            and "transfer-encoding" not in self.headers
        ):
            self.on_message_complete()
        self.fail(ServerDisconnected("the provider closed the connection"))

    # httptools' callbacks (a name and its whole value each)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        encoding = self.headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        elif encoding not in ("identity", ""):
            raise MalformedAnswer(f"unsupported content-encoding {encoding!r}")
        _resolve(self.head)

    def on_body(self, chunk: bytes) -> None:
        if self._decoder is not None:
            try:
                chunk = self._decoder.decompress(chunk)
            except zlib.error as exc:
                raise MalformedAnswer(f"undecodable body: {exc}") from None
        self.body.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _READ_AHEAD and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        _resolve(self.readable)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # only known here: the parser resets
        if self._decoder is not None:
            self.body.append(self._decoder.flush())
            self._decoder = None
        _resolve(self.done)
        _resolve(self.readable)

    # the exchange

    def begin(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.status, self.headers, self.body, self._buffered = 0, {}, [], 0
        self.keep_alive = self.heard = False
        self.head, self.done, self.readable = loop.create_future(), loop.create_future(), None
        assert self.transport is not None
        self.transport.write(request)

    def fail(self, exc: BaseException) -> None:
        """End the exchange in progress with `exc` (its waiters raise it), and the connection."""
        self.closed = True
        for waiter in (self.head, self.done, self.readable):
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()  # retrieved: an abandoned exchange is not an error to log
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def take_body(self) -> bytes:
        data = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        self.body, self._buffered = [], 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        return (
            not self.closed
            and self.done is not None
            and self.done.done()
            and not self.done.exception()
            and self.keep_alive
        )


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Http1Transport:
    """`HttpTransport` over pooled HTTP/1.1 connections (http and https)."""

    def __init__(self, keepalive_s: float = 30.0, connect_s: float = 10.0) -> None:
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._keepalive_s = keepalive_s
        self._connect_s = connect_s
        self._tls: ssl.SSLContext | None = None

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        return await self._whole("POST", url, body, headers, timeout)

    async def get(
        self, url: str, headers: dict[str, str], timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        """A GET (`doctor` asks a provider's models endpoint); not part of `HttpTransport`."""
        return await self._whole("GET", url, b"", headers, timeout)

    async def _whole(
        self, method: str, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        conn, timer = await self._answer_head(method, url, body, headers, timeout)
        status, answer_headers = conn.status, conn.headers
        return status, answer_headers, await self._rest(conn, timer)

    async def stream(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> OpenStream:
        conn, timer = await self._answer_head("POST", url, body, headers, timeout)
        if conn.status == 200:
            # The timer stays: it bounds the whole stream, and closes the connection of a
            # stream whose reader never starts.
            return OpenStream(conn.status, conn.headers, lines=self._lines(conn, timer))
        status, answer_headers = conn.status, conn.headers
        return OpenStream(status, answer_headers, await self._rest(conn, timer))

    async def _rest(self, conn: _Connection, timer: asyncio.TimerHandle) -> bytes:
        """The whole body of the answer whose head is in; the connection goes back to the pool."""
        try:
            assert conn.done is not None
            await conn.done
        except BaseException:
            conn.fail(ServerDisconnected("the call was abandoned"))
            raise
        finally:
            timer.cancel()
        body = conn.take_body()
        self._release(conn)
        return body

    async def _answer_head(
        self, method: str, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[_Connection, asyncio.TimerHandle]:
        """Send the request; the connection once the answer's status and headers are in, and
        the timer that ends the call at its deadline. A kept connection that the provider
        closed as the request went out (it heard nothing of it: not a byte came back) is
        replaced and the request sent again, as Go's http.Transport does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        request = _request(method, url, body, headers)
        while True:
            conn, kept = await self._connection(url, deadline)
            timer = loop.call_at(deadline, conn.fail, TimeoutError("no whole answer in time"))
            try:
                conn.begin(request)
                assert conn.head is not None
                await conn.head
                return conn, timer
            except BaseException as exc:
                timer.cancel()
                conn.fail(ServerDisconnected("the call was abandoned"))
                if kept and not conn.heard and isinstance(exc, ServerDisconnected):
                    continue
                raise

    async def _lines(self, conn: _Connection, timer: asyncio.TimerHandle) -> AsyncGenerator[str, None]:
        """The body's lines as they arrive, without their line ends."""
        loop = asyncio.get_running_loop()
        assert conn.done is not None
        pending = b""
        try:
            while True:
                if conn.body:
                    pending += conn.take_body()
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line.decode("utf-8", "replace").rstrip("\r")
                elif conn.done.done():
                    conn.done.result()  # raises what ended the connection early
                    break
                else:
                    conn.readable = loop.create_future()
                    await conn.readable
                    conn.readable = None
            if pending:
                yield pending.decode("utf-8", "replace").rstrip("\r")
        except BaseException:
            conn.fail(ServerDisconnected("the stream was abandoned"))
            raise
        finally:
            timer.cancel()
            self._release(conn)

    async def _connection(self, url: str, deadline: float) -> tuple[_Connection, bool]:
        """A kept connection to the URL's origin (and True), else a new one."""
        origin = _origin(url)
        loop = asyncio.get_running_loop()
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed and loop.time() - conn.idle_since < self._keepalive_s:
                return conn, True
            self._close(conn)
        scheme, host, port = origin
        tls = self._tls_context() if scheme == "https" else None
        conn = _Connection(origin, self._open)
        try:
            async with asyncio.timeout(min(deadline - loop.time(), self._connect_s)):
                await loop.create_connection(
                    lambda: conn, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except OSError as exc:  # refused, unreachable, unknown host, TLS: not TimeoutError
            if isinstance(exc, TimeoutError):
                raise
            raise CannotConnect(f"cannot connect to the provider: {type(exc).__name__}") from exc
        return conn, False

    def _release(self, conn: _Connection) -> None:
        if conn.reusable():
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(conn.origin, []).append(conn)
        else:
            self._close(conn)

    @staticmethod
    def _close(conn: _Connection) -> None:
        conn.closed = True
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
            self._tls.set_alpn_protocols(["http/1.1"])
        return self._tls

    async def aclose(self) -> None:
        for conn in list(self._open):
            self._close(conn)
        self._idle.clear()
        self._open.clear()


def _origin(url: str) -> Origin:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the provider's URL is not an http(s) URL")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _request(method: str, url: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The request's bytes. Names and values come from config and the proxy, never the
    client; a line break in one would split the request, so it is refused."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = (
        f"{method} {target} HTTP/1.1\r\nhost: {parts.netloc.rpartition('@')[2]}\r\n"
        f"accept-encoding: gzip, deflate\r\ncontent-length: {len(body)}\r\n"
    )
    for name, value in headers.items():
        line = f"{name}: {value}\r\n"
        if line.count("\n") != 1 or "\r" in line[:-2]:
            raise ValueError(f"header {name!r} holds a line break")
        head += line
    return (head + "\r\n").encode("latin-1") + body
