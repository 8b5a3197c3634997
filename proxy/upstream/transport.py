"""The HTTP transport of direct upstream calls: a protocol, and the aiohttp implementation
the server uses (its pool stays cheap with hundreds of open connections; httpcore's scans
every connection per request). Transports raise their own library's exceptions; the
direct upstream translates them at one boundary (`proxy.upstream.errors`). Tests inject
another transport (`proxy.testing.transports`) instead of switching this one by config.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

Headers = Mapping[str, str]


@dataclass(slots=True)
class OpenStream:
    """A streamed answer: its lines when the status is 200, else the whole error body."""

    status: int
    headers: Headers
    content: bytes = b""
    lines: AsyncGenerator[str, None] | None = None


class HttpTransport(Protocol):
    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, Headers, bytes]: ...

    async def stream(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> OpenStream: ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=2000, limit_per_host=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, Headers, bytes]:
        async with self._client().post(url, data=body, headers=headers, timeout=_timeout(timeout)) as r:
            return r.status, r.headers, await r.read()

    async def get(self, url: str, headers: dict[str, str], timeout: float) -> tuple[int, Headers, bytes]:
        """A GET (`doctor` asks a provider's models endpoint); not part of `HttpTransport`."""
        async with self._client().get(url, headers=headers, timeout=_timeout(timeout)) as r:
            return r.status, r.headers, await r.read()

    async def stream(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> OpenStream:
        response = await self._client().post(url, data=body, headers=headers, timeout=_timeout(timeout))
        if response.status != 200:
            content = await response.read()
            response.release()
            return OpenStream(response.status, response.headers, content)
        return OpenStream(response.status, response.headers, lines=self._lines(response))

    @staticmethod
    async def _lines(response: aiohttp.ClientResponse) -> AsyncGenerator[str, None]:
        try:
            async for raw in response.content:
                yield raw.decode("utf-8", "replace").rstrip("\r\n")
        finally:
            response.release()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _timeout(total: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, connect=min(total, 10.0))
