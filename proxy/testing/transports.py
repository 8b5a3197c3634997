"""The direct upstream's transport over httpx, for tests: respx (or an
`httpx.MockTransport` client passed in) intercepts it, where it cannot see the HTTP/1.1
transport the server uses. Injected with `Upstreams(..., transport=HttpxTransport())`,
the pattern of httpx's own `MockTransport`: the fake is chosen by the caller, never by a
config switch."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import httpx

from proxy.upstream.transport import Headers, OpenStream


class HttpxTransport:
    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._http = client

    def _client(self) -> httpx.AsyncClient:
        if self._http is None or self._http.is_closed:
            self._http = httpx.AsyncClient()
        return self._http

    def _request(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> httpx.Request:
        return self._client().build_request(
            "POST",
            url,
            content=body,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        )

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, Headers, bytes]:
        response = await self._client().send(self._request(url, body, headers, timeout))
        return response.status_code, response.headers, response.content

    async def get(self, url: str, headers: dict[str, str], timeout: float) -> tuple[int, Headers, bytes]:
        response = await self._client().get(
            url, headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))
        )
        return response.status_code, response.headers, response.content

    async def stream(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> OpenStream:
        response = await self._client().send(self._request(url, body, headers, timeout), stream=True)
        if response.status_code != 200:
            content = await response.aread()
            await response.aclose()
            return OpenStream(response.status_code, response.headers, content)
        return OpenStream(response.status_code, response.headers, lines=self._lines(response))

    @staticmethod
    async def _lines(response: httpx.Response) -> AsyncGenerator[str, None]:
        try:
            async for line in response.aiter_lines():
                yield line
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
