"""Misses to OpenAI-compatible upstreams without litellm (opt-in: `passthrough: true`).

litellm makes any provider look like OpenAI, at ~8 ms of CPU per call here. When the
upstream already speaks the OpenAI API (OpenAI itself, vLLM, Ollama, another proxy), the
request can go straight through: the client's body is forwarded with the upstream model
name over one pooled HTTP client (aiohttp; httpx when `upstream.http_client: httpx`).
URL and key come from config only; the client's fields go in the JSON body, never into
where or how the call is made.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

import aiohttp
import httpx
import orjson

from proxy.config import ModelConfig
from proxy.errors import ProxyError, UpstreamError, UpstreamRateLimited, UpstreamRejected, UpstreamTimeout
from proxy.upstream.litellm_upstream import OWN, vectors_in_order

_OPENAI = "https://api.openai.com/v1"  # an openai/ model without api_base
_PATHS = {"chat": "/chat/completions", "completions": "/completions", "responses": "/responses"}


def upstream_model(model: ModelConfig) -> str:
    """`openai/gpt-4o-mini` -> `gpt-4o-mini`: the name the OpenAI-compatible server knows."""
    return model.litellm_model.split("/", 1)[1]


class PassthroughUpstream:
    def __init__(self, default_timeout_s: float, http_client: str = "aiohttp") -> None:
        self._timeout = default_timeout_s
        self._transport: _Transport = _Aiohttp() if http_client == "aiohttp" else _Httpx()

    def _prepare(
        self, model: ModelConfig, body: dict[str, Any], stream: bool, api: str = "chat"
    ) -> tuple[str, bytes, dict[str, str], float]:
        payload = {k: v for k, v in body.items() if k not in OWN[api]}
        payload["model"] = upstream_model(model)
        if stream:
            payload["stream"] = True
            if api != "responses":  # its final event carries usage anyway
                payload["stream_options"] = {"include_usage": True}  # stored answers carry usage
        headers = {"content-type": "application/json"}
        if model.api_key:
            headers["authorization"] = f"Bearer {model.api_key}"
        url = f"{(model.api_base or _OPENAI).rstrip('/')}{_PATHS[api]}"
        return url, orjson.dumps(payload), headers, model.timeout_seconds or self._timeout

    async def complete(self, model: ModelConfig, body: dict[str, Any], api: str = "chat") -> dict[str, Any]:
        data = _json_answer(*await self._transport.post(*self._prepare(model, body, False, api)))
        part = "output" if api == "responses" else "choices"
        if not isinstance(data, dict) or not isinstance(data.get(part), list):
            raise UpstreamError(f"The upstream provider's answer is not a {api} answer.")
        return data

    async def stream(
        self, model: ModelConfig, body: dict[str, Any], api: str = "chat"
    ) -> AsyncGenerator[dict[str, Any], None]:
        lines = await self._transport.stream(*self._prepare(model, body, True, api))
        return _events(lines)

    async def embed(
        self, model: ModelConfig, inputs: list[Any], dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        payload: dict[str, Any] = {
            "model": upstream_model(model),
            "input": inputs,
            "encoding_format": "float",
        }
        if dimensions is not None:
            payload["dimensions"] = dimensions
        url, _, headers, timeout = self._prepare(model, {}, stream=False)
        url = url.removesuffix(_PATHS["chat"]) + "/embeddings"
        data = _json_answer(*await self._transport.post(url, orjson.dumps(payload), headers, timeout))
        return vectors_in_order(data, len(inputs))

    async def aclose(self) -> None:
        await self._transport.aclose()


async def _events(lines: AsyncGenerator[str, None]) -> AsyncGenerator[dict[str, Any], None]:
    try:
        async for line in lines:
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamError("The upstream provider sent a malformed stream event.") from None
            if isinstance(chunk, dict) and "error" in chunk:
                raise UpstreamError(f"The upstream provider failed mid-stream: {chunk['error']}")
            yield chunk
    finally:
        await lines.aclose()


Headers = Mapping[str, str]


class _Transport(Protocol):
    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, Headers, bytes]: ...

    async def stream(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> AsyncGenerator[str, None]:
        """Lines of a 200 answer; raises the mapped error for any other status."""
        ...

    async def aclose(self) -> None: ...


class _Aiohttp:
    """aiohttp's pool stays cheap with hundreds of open connections."""

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
        try:
            async with self._client().post(
                url, data=body, headers=headers, timeout=_aio_timeout(timeout)
            ) as r:
                return r.status, r.headers, await r.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(exc) from exc

    async def stream(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> AsyncGenerator[str, None]:
        try:
            response = await self._client().post(
                url, data=body, headers=headers, timeout=_aio_timeout(timeout)
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(exc) from exc
        if response.status != 200:
            content = await response.read()
            response.release()
            raise _status_error(response.status, content, response.headers)
        return self._lines(response)

    @staticmethod
    async def _lines(response: aiohttp.ClientResponse) -> AsyncGenerator[str, None]:
        try:
            async for raw in response.content:
                yield raw.decode("utf-8", "replace").rstrip("\r\n")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(exc) from exc
        finally:
            response.release()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _aio_timeout(total: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, connect=min(total, 10.0))


class _Httpx:
    """httpx: slower pool at high concurrency, but respx can intercept it (tests)."""

    def __init__(self) -> None:
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None or self._http.is_closed:
            self._http = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=2000, max_keepalive_connections=500)
            )
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
        try:
            response = await self._client().send(self._request(url, body, headers, timeout))
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        return response.status_code, response.headers, response.content

    async def stream(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> AsyncGenerator[str, None]:
        try:
            response = await self._client().send(self._request(url, body, headers, timeout), stream=True)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        if response.status_code != 200:
            content = await response.aread()
            await response.aclose()
            raise _status_error(response.status_code, content, response.headers)
        return self._lines(response)

    @staticmethod
    async def _lines(response: httpx.Response) -> AsyncGenerator[str, None]:
        try:
            async for line in response.aiter_lines():
                yield line
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _json_answer(status: int, headers: Headers, content: bytes) -> Any:
    """A 200 answer's JSON; any other status or a body that is not JSON as the mapped error."""
    if status != 200:
        raise _status_error(status, content, headers)
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream provider answered with something that is not JSON.") from None


def _transport_error(exc: BaseException) -> ProxyError:
    if isinstance(exc, httpx.TimeoutException | TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(f"The upstream provider timed out: {type(exc).__name__}")
    return UpstreamError(f"Could not reach the upstream provider: {type(exc).__name__}: {exc}")


def _status_error(status: int, content: bytes, headers: Headers) -> ProxyError:
    try:
        error = orjson.loads(content).get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    message = message or f"HTTP {status}"
    if status == 429:
        kept = {k: str(headers[k]) for k in ("retry-after", "retry-after-ms") if k in headers}
        return UpstreamRateLimited(f"The upstream provider is rate limiting: {message}", headers=kept)
    if status in (401, 403):
        return UpstreamError("The upstream provider rejected the proxy's credentials for this model.")
    if status in (400, 409, 413, 422):
        return UpstreamRejected(message, status=status)
    return UpstreamError(f"The upstream provider failed: {message}")
