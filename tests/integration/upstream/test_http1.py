"""The direct route's HTTP/1.1 client (proxy/upstream/http1.py) against real sockets: a
scripted server on loopback writes exactly the bytes each case needs, on both event loops
the proxy runs on (asyncio in tests, uvloop in serve)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.upstream.errors import translate
from proxy.upstream.http1 import CannotConnect, Http1Transport, MalformedAnswer, ServerDisconnected
from tests.servers import free_port

LOOPS = ["asyncio", "uvloop"]
Handler = Callable[["Scripted", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-secret"}


def run(loop: str, work: Callable[[], Awaitable[Any]]) -> Any:
    if loop == "uvloop":
        return uvloop.run(work())
    return asyncio.run(work())


class Scripted:
    """A loopback server: `handler(reader, writer, n)` answers its n-th connection (from 0)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n, self.connections = self.connections, self.connections + 1
        try:
            await self.handler(self, reader, writer, n)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def answer(body: bytes, status: str = "200 OK", *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def exercise(
    loop: str,
    handler: Handler,
    steps: Callable[[Scripted, Http1Transport], Awaitable[None]],
    **options: float,
) -> None:
    """Serve `handler` on loopback, run `steps` against it with a new client, close both."""

    async def work() -> None:
        async with Scripted(handler) as server:
            http = Http1Transport(**options)
            try:
                await steps(server, http)
            finally:
                await http.aclose()

    run(loop, work)


@pytest.mark.parametrize("loop", LOOPS)
def test_post_sends_one_request_and_keeps_the_connection(loop: str) -> None:
    async def handler(
        server: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while True:
            await server.read_request(reader)
            writer.write(answer(b'{"n": 1}', "200 OK", "content-type: application/json"))

    async def steps(server: Scripted, http: Http1Transport) -> None:
        for _ in range(3):
            status, headers, body = await http.post(server.url, b'{"a": 1}', HEADERS, 5)
            assert (status, body) == (200, b'{"n": 1}')
            assert headers["content-type"] == "application/json"
        assert server.connections == 1  # kept and reused
        head, _, sent = server.requests[0].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
        assert f"host: 127.0.0.1:{server.port}".encode() in lines
        assert b"authorization: Bearer sk-secret" in lines and b"content-length: 8" in lines
        assert sent == b'{"a": 1}'

    exercise(loop, handler, steps)


@pytest.mark.parametrize("loop", LOOPS)
def test_bodies_chunked_gzip_deflate_and_until_close(loop: str) -> None:
    text = b'{"content": "' + b"x" * 5000 + b'"}'

    async def handler(
        server: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader)
        if n == 0:  # chunked, in pieces split across writes
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for piece in (text[:10], text[10:3000], text[3000:]):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
        elif n == 1:
            writer.write(answer(gzip.compress(text), "200 OK", "content-encoding: gzip"))
        elif n == 2:
            writer.write(answer(zlib.compress(text), "200 OK", "content-encoding: deflate"))
        else:  # neither length nor chunks: the body ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + text)
            await writer.drain()
            return  # closed: that is where the body ends
        await writer.drain()
        await reader.read()  # until the client closes

    async def steps(server: Scripted, http: Http1Transport) -> None:
        for _ in range(4):
            status, _, body = await http.post(server.url, b"{}", HEADERS, 5)
            assert (status, body) == (200, text)
            await http.aclose()  # a new connection each: the handler answers by number

    exercise(loop, handler, steps)


@pytest.mark.parametrize("loop", LOOPS)
def test_what_cannot_be_read_is_an_error_never_text(loop: str) -> None:
    cases = [
        answer(b"\x89PNG", "200 OK", "content-encoding: br"),
        answer(b"not gzip at all", "200 OK", "content-encoding: gzip"),
        b"SMTP ready\r\n\r\n",
    ]

    async def handler(
        server: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader)
        writer.write(cases[n])
        await writer.drain()
        await reader.read()

    async def steps(server: Scripted, http: Http1Transport) -> None:
        for _ in cases:
            with pytest.raises(MalformedAnswer):
                await http.post(server.url, b"{}", HEADERS, 5)
        assert server.connections == len(cases)  # a broken connection is never reused
        error = translate(MalformedAnswer("x"))
        assert isinstance(error, UpstreamError) and error.status == 502

    exercise(loop, handler, steps)


@pytest.mark.parametrize("loop", LOOPS)
def test_an_answer_cut_short_fails_and_is_not_retried(loop: str) -> None:
    async def handler(
        server: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial')
        await writer.drain()
        writer.transport.abort()

    async def steps(server: Scripted, http: Http1Transport) -> None:
        with pytest.raises(ServerDisconnected) as caught:
            await http.post(server.url, b"{}", HEADERS, 5)
        assert translate(caught.value).reason == "upstream_unreachable"
        assert server.connections == 1 and len(server.requests) == 1  # sent once: it was heard

    exercise(loop, handler, steps)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_kept_connection_closed_by_the_provider_is_replaced_once(loop: str) -> None:
    """The provider closes an idle kept connection just as the next request goes out: it
    read nothing of it, so the request goes again on a new connection (as Go does)."""

    async def handler(
        server: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader)
        writer.write(answer(b'{"n": %d}' % n))
        await writer.drain()
        if n == 0:
            await reader.readuntil(b"\r\n\r\n")  # the second request arrives: close unanswered
            writer.transport.abort()
        else:
            await reader.read()

    async def steps(server: Scripted, http: Http1Transport) -> None:
        assert (await http.post(server.url, b"{}", HEADERS, 5))[2] == b'{"n": 0}'
        assert (await http.post(server.url, b"{}", HEADERS, 5))[2] == b'{"n": 1}'
        assert server.connections == 2

    exercise(loop, handler, steps)


@pytest.mark.parametrize("loop", LOOPS)
def test_connection_close_and_idle_expiry_open_new_connections(loop: str) -> None:
    async def handler(
        server: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while True:
            await server.read_request(reader)
            extra = ("connection: close",) if n == 0 else ()
            writer.write(answer(b"{}", "200 OK", *extra))
            await writer.drain()
            if extra:
                return

    async def steps(server: Scripted, http: Http1Transport) -> None:
        await http.post(server.url, b"{}", HEADERS, 5)  # connection 0: closed by its answer
        await http.post(server.url, b"{}", HEADERS, 5)  # connection 1
        await http.post(server.url, b"{}", HEADERS, 5)  # connection 1 again
        assert server.connections == 2
        await asyncio.sleep(0.3)  # idle past keepalive_s: not reused
        await http.post(server.url, b"{}", HEADERS, 5)
        assert server.connections == 3

    exercise(loop, handler, steps, keepalive_s=0.2)


@pytest.mark.parametrize("loop", LOOPS)
def test_deadline_covers_the_whole_call(loop: str) -> None:
    async def handler(
        server: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader)
        if n == 1:  # headers at once, the body never
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
            await writer.drain()
        await reader.read()

    async def steps(server: Scripted, http: Http1Transport) -> None:
        for _ in range(2):
            with pytest.raises(TimeoutError) as caught:
                await http.post(server.url, b"{}", HEADERS, 0.3)
            assert isinstance(translate(caught.value), UpstreamTimeout)
        assert server.connections == 2  # a timed-out connection is closed, never reused

    exercise(loop, handler, steps)


@pytest.mark.parametrize("loop", LOOPS)
def test_nothing_listening_is_cannot_connect(loop: str) -> None:
    async def work() -> None:
        http = Http1Transport()
        with pytest.raises(CannotConnect) as caught:
            await http.post(f"http://127.0.0.1:{free_port()}/v1/x", b"{}", HEADERS, 5)
        assert translate(caught.value).reason == "upstream_unreachable"
        assert "127.0.0.1" not in str(translate(caught.value).message)
        with pytest.raises(ValueError):
            await http.post("http://127.0.0.1:1/v1/x", b"{}", {"x-bad": "a\r\nInjected: 1"}, 5)
        await http.aclose()

    run(loop, work)


@pytest.mark.parametrize("loop", LOOPS)
def test_stream_lines_as_they_arrive_and_errors_whole(loop: str) -> None:
    events = [b'data: {"i": %d}\n\n' % i for i in range(3000)]  # ~50 KB: past one read

    async def handler(
        server: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while True:
            request = await server.read_request(reader)
            if b'"fail"' in request:
                writer.write(answer(b'{"error": {"message": "slow down"}}', "429 Too Many Requests"))
                continue
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for event in events:
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def steps(server: Scripted, http: Http1Transport) -> None:
        opened = await http.stream(server.url, b'{"ok": 1}', HEADERS, 5)
        assert opened.status == 200 and opened.lines is not None
        lines = [line async for line in opened.lines]
        assert [line for line in lines if line] == [e.decode().strip() for e in events]
        failed = await http.stream(server.url, b'{"fail": 1}', HEADERS, 5)
        assert (failed.status, failed.lines) == (429, None)
        assert failed.content == b'{"error": {"message": "slow down"}}'
        again = await http.stream(server.url, b"{}", HEADERS, 5)
        assert again.lines is not None
        async for _ in again.lines:
            break  # the reader stops early: that connection cannot be reused
        await again.lines.aclose()
        await http.post(server.url, b'{"fail": 1}', HEADERS, 5)
        assert server.connections == 2

    exercise(loop, handler, steps)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_slow_reader_holds_the_socket_back_and_loses_nothing(loop: str) -> None:
    line = b"data: " + b"y" * 1000 + b"\n"

    async def handler(
        server: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (len(line) * 4000))
        for _ in range(4000):  # 4 MB, more than the client reads ahead
            writer.write(line)
            await writer.drain()
        await reader.read()

    async def steps(server: Scripted, http: Http1Transport) -> None:
        opened = await http.stream(server.url, b"{}", HEADERS, 10)
        assert opened.lines is not None
        count = 0
        async for got in opened.lines:
            if count == 0:
                await asyncio.sleep(0.3)  # the server fills the client's read-ahead meanwhile
            assert got == line.decode().rstrip("\n")
            count += 1
        assert count == 4000

    exercise(loop, handler, steps)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_cancelled_call_closes_its_connection(loop: str) -> None:
    async def handler(
        server: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while True:
            await server.read_request(reader)
            if n == 0:
                await reader.read()  # never answers the first connection
                return
            writer.write(answer(b"{}"))

    async def steps(server: Scripted, http: Http1Transport) -> None:
        call = asyncio.ensure_future(http.post(server.url, b"{}", HEADERS, 5))
        while not server.requests:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await http.post(server.url, b"{}", HEADERS, 5))[0] == 200
        assert server.connections == 2

    exercise(loop, handler, steps)
