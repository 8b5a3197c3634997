"""The HTTP transport of direct upstream calls: the protocol the direct upstream calls
through. The server's is `proxy.upstream.http1.Http1Transport`; tests inject another
(`proxy.testing.transports`) instead of switching this one by config. Transports raise
their own exceptions; the direct upstream translates them at one boundary
(`proxy.upstream.errors`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Protocol

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
