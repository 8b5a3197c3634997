"""uvicorn served with JoinedWritesProtocol (proxy/http/server_protocol.py): a response's
head and body leave in one write, and nothing else about HTTP changes: keep-alive,
pipelined requests answered in order, a stream's chunks sent as they come (never held to
the end), `connection: close` after the whole answer."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from proxy.http.server_protocol import JoinedWritesProtocol, _JoinedWrites

# The streaming app sends its next chunk only once the client has read the one before: a
# chunk held back until the end would leave the client waiting (socket timeout: a failure).
chunk_read = threading.Semaphore(0)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/stream":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        for n in range(3):
            await send({"type": "http.response.body", "body": b"chunk %d\n" % n, "more_body": True})
            await asyncio.get_running_loop().run_in_executor(None, chunk_read.acquire, True, 5)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    body = scope["path"].encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    if scope["path"] == "/bye":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=JoinedWritesProtocol, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield listener.getsockname()[1]
    server.should_exit = True
    thread.join(5)


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode()


def read_until(sock: socket.socket, marker: bytes, count: int = 1) -> bytes:
    data = b""
    while data.count(marker) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_keep_alive_and_pipelined_requests_in_order(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request("/one"))
        first = read_until(sock, b"/one")
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n/one")
        sock.sendall(request("/a") + request("/b") + request("/c"))  # pipelined
        answers = read_until(sock, b"HTTP/1.1 200", 3)
        while not answers.endswith(b"/c"):
            answers += sock.recv(65536)
        bodies = [part.rsplit(b"\r\n\r\n", 1)[1] for part in answers.split(b"HTTP/1.1 200 OK")[1:]]
        assert bodies == [b"/a", b"/b", b"/c"]


def test_a_stream_is_sent_as_it_comes(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request("/stream"))
        head = read_until(sock, b"chunk 0")
        assert b"transfer-encoding: chunked" in head
        for n in (1, 2):
            chunk_read.release()
            assert b"chunk %d" % n in read_until(sock, b"chunk %d" % n)
        chunk_read.release()
        assert read_until(sock, b"0\r\n\r\n").endswith(b"0\r\n\r\n")


def test_connection_close_sends_the_whole_answer_first(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request("/bye"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\n/bye")
        assert b"connection: close" in data


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


def test_writes_of_one_turn_are_one_write_close_flushes_abort_drops() -> None:
    async def work() -> None:
        loop = asyncio.get_running_loop()
        real = RecordingTransport()
        joined = _JoinedWrites(real, loop)  # type: ignore[arg-type]
        joined.write(b"HTTP/1.1 200 OK\r\n\r\n")
        joined.write(b"body")
        assert real.writes == []  # not before the end of this turn
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        joined.write(b"next")
        await asyncio.sleep(0)
        assert real.writes[-1] == b"next"
        assert joined.get_extra_info("peername") == "extra peername"  # the rest passes through
        joined.write(b"last words")
        joined.close()
        assert real.writes[-1] == b"last words" and real.closed

        other = RecordingTransport()
        dropped = _JoinedWrites(other, loop)  # type: ignore[arg-type]
        dropped.write(b"never")
        dropped.abort()
        await asyncio.sleep(0)
        assert other.writes == [] and other.aborted

    asyncio.run(work())
