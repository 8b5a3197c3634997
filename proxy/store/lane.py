"""One pipelined Redis connection for the hot path's commands (the cache GET, the flight,
store and limiter scripts).

redis-py checks a connection out of its pool for every command, waits for that command's
reply alone, and records observability for it: about 95 us of CPU per GET here, most of a
cache hit. Here every concurrent request's command is written on one connection as it
comes (Redis answers in order), and the replies are parsed by hiredis (C) as they arrive:
about 30 us per GET at 32 concurrent requests. Only for a plain `redis://` or `unix://`
server; TLS, Sentinel and Cluster keep redis-py (`PipelinedConnection.for_url` is None).

Bounds: each call is bounded by its own deadline (`timeout_s`: the `RedisGate`'s Redis
timeout), one timer per call. A call cut off leaves its reply to be read and dropped.
When a call is cut off after nothing at all came back for a whole timeout while replies
are owed, the connection is watched for one more timeout: if still no reply has come by
then, it is stalled and dropped, every owed call fails as a timeout (so the breaker
counts them as such) and the next call connects again. (Not at once: on a starved event
loop, uvloop runs due timers before it reads the socket, so replies already there would
look missing.)
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = tuple[Any, ...]


def pack(command: Command) -> bytes:
    """A command in the Redis protocol (RESP), encoded as redis-py encodes it: hiredis's C
    packer (a third of the cost of the loop in Python it replaces; same bytes for str,
    bytes, int and float, and a bool or anything else is refused)."""
    try:
        return hiredis.pack_command(command)
    except TypeError as exc:
        raise DataError(f"Invalid input for a Redis command: {exc}") from None


_GRACE_S = 0.001  # a timer, not call_soon: uvloop runs those before it polls, too


class _Protocol(asyncio.Protocol):
    """Matches replies to the futures of the commands, in the order they were written."""

    def __init__(self, lane: PipelinedConnection) -> None:
        self._lane = lane
        self._reader = hiredis.Reader(replyError=ResponseError)
        self.owed: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.progress = 0.0  # loop time of the last reply, or of the first owed command
        self.replies = 0  # replies read so far
        # Commands written in one go at the end of the loop's turn: one send for every
        # request that asked in it (a send per command was a quarter of a cache hit).
        self.outbox: list[bytes] = []

    def send_soon(self, data: bytes) -> None:
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self._send)
        self.outbox.append(data)

    def _send(self) -> None:
        data, self.outbox = b"".join(self.outbox), []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        reader, owed = self._reader, self.owed
        reader.feed(data)
        replies = self.replies
        while (reply := reader.gets()) is not False:
            self.replies += 1
            if not owed:  # a reply nobody asked for: the stream is out of step
                self._lane._drop(self, RedisConnectionError("Redis sent a reply nobody asked for."))
                return
            future = owed.popleft()
            if not future.done():  # a caller cut off by its timeout: the reply is dropped
                future.set_result(reply)
        if self.replies != replies:
            self.progress = asyncio.get_running_loop().time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lane._drop(self, RedisConnectionError(f"Connection to Redis lost: {exc or 'closed'}"))


def _expire(futures: list[asyncio.Future[Any]], grace: bool = True) -> None:
    """A call's deadline: the replies it still waits for will not be read (they are dropped
    when they come). Not at once: uvloop runs due timers before it reads the sockets, so
    after a stall of the loop itself (a long import on another thread holding the GIL) the
    replies can be there, unread. The failure waits one more pass over the sockets."""
    if grace:
        if not all(future.done() for future in futures):
            asyncio.get_running_loop().call_later(_GRACE_S, _expire, futures, False)
        return
    for future in futures:
        if not future.done():
            future.set_exception(RedisTimeoutError("Redis did not answer in time."))


class PipelinedConnection:
    def __init__(
        self,
        host: str | None,
        port: int,
        path: str | None,
        db: int,
        username: str | None,
        password: str | None,
        connect_timeout_s: float,
        stall_s: float,
    ) -> None:
        self._where = (host, port, path)
        self._db, self._username, self._password = db, username, password
        self._connect_timeout = connect_timeout_s
        self._stall = stall_s
        self._protocol: _Protocol | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def for_url(cls, url: str, connect_timeout_s: float, stall_s: float) -> PipelinedConnection | None:
        """A lane for a plain `redis://host:port/db` or `unix:///path?db=N` server; None for
        anything else (TLS, Sentinel, Cluster, several nodes), which redis-py serves."""
        if "," in url:
            return None
        parts = urlsplit(url)
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if set(query) - {"db"}:
            return None  # options this lane does not know: redis-py's connection
        if parts.scheme == "redis":
            path_db = parts.path.strip("/")
            db = int(query.get("db") or path_db or 0)
            host = parts.hostname or "localhost"
            return cls(host, parts.port or 6379, None, db, username, password, connect_timeout_s, stall_s)
        if parts.scheme == "unix":
            db = int(query.get("db") or 0)
            return cls(None, 0, parts.path, db, username, password, connect_timeout_s, stall_s)
        return None

    async def execute(self, *command: Any, timeout_s: float | None = None) -> Any:
        """One command's reply; a Redis error reply raises it (NoScriptError for NOSCRIPT)."""
        return (await self.execute_many([command], timeout_s))[0]

    async def execute_many(self, commands: list[Command], timeout_s: float | None = None) -> list[Any]:
        """Several commands written at once, their replies in order (not a transaction).
        Replies not in within `timeout_s` (connecting included) raise a timeout: one
        timer per call, not an `asyncio.timeout` (its Timeout object and rescheduling were
        twice the timer's cost, per Redis call)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        protocol = self._protocol
        if protocol is None:
            async with asyncio.timeout_at(deadline):
                protocol = await self._connect()
        return await self._replies(protocol, commands, deadline)

    async def _replies(
        self, protocol: _Protocol, commands: list[Command], deadline: float | None
    ) -> list[Any]:
        loop = asyncio.get_running_loop()
        if not protocol.owed:
            protocol.progress = loop.time()
        futures = [loop.create_future() for _ in commands]
        protocol.owed.extend(futures)
        protocol.send_soon(b"".join(map(pack, commands)))
        timer = None if deadline is None else loop.call_at(deadline, _expire, futures)
        try:
            replies = [await future for future in futures]
        except BaseException as exc:
            for future in futures:  # the rest: nobody will read them now
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()
            quiet = protocol.owed and loop.time() - protocol.progress >= self._stall
            if isinstance(exc, asyncio.CancelledError | RedisTimeoutError) and quiet:
                loop.call_later(self._stall, self._drop_if_stalled, protocol, protocol.replies)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        for reply in replies:
            if isinstance(reply, ResponseError):
                if str(reply).startswith("NOSCRIPT"):
                    raise NoScriptError(str(reply))
                raise reply
        return replies

    async def _connect(self) -> _Protocol:
        async with self._lock:
            if self._protocol is not None:
                return self._protocol
            if self._closed:
                raise RedisConnectionError("The Redis connection is closed.")
            loop = asyncio.get_running_loop()
            host, port, path = self._where
            try:
                async with asyncio.timeout(self._connect_timeout):
                    if path is not None or host is None:
                        _, protocol = await loop.create_unix_connection(lambda: _Protocol(self), path)
                    else:
                        _, protocol = await loop.create_connection(lambda: _Protocol(self), host, port)
            except TimeoutError:
                raise RedisTimeoutError("Timeout connecting to Redis.") from None
            except OSError as exc:
                raise RedisConnectionError(f"Error connecting to Redis: {exc.strerror or exc}") from None
            self._protocol = protocol
            hello: list[Command] = []
            if self._password is not None:
                user = (self._username,) if self._username else ()
                hello.append(("AUTH", *user, self._password))
            if self._db:
                hello.append(("SELECT", self._db))
            if hello:
                try:
                    await self.execute_many(hello)
                except ResponseError as exc:
                    refused = RedisConnectionError(f"Redis refused the connection: {exc}")
                    self._drop(protocol, refused, abort=True)
                    raise refused from None
            return protocol

    def _drop_if_stalled(self, protocol: _Protocol, replies: int) -> None:
        """Drop the connection if it still owes replies and none came since `replies`."""
        if self._protocol is protocol and protocol.owed and protocol.replies == replies:
            self._drop(protocol, RedisTimeoutError("Redis did not answer in time."), abort=True)

    def _drop(self, protocol: _Protocol, error: Exception, abort: bool = False) -> None:
        """Forget a connection and fail every call still owed a reply on it."""
        if self._protocol is protocol:
            self._protocol = None
        owed, protocol.owed = protocol.owed, collections.deque()
        for future in owed:
            if not future.done():
                future.set_exception(error)
        if abort and protocol.transport is not None:
            protocol.transport.abort()

    async def aclose(self) -> None:
        self._closed = True
        protocol = self._protocol
        if protocol is not None:
            self._drop(protocol, RedisConnectionError("The Redis connection is closed."))
            if protocol.transport is not None:
                protocol.transport.close()
