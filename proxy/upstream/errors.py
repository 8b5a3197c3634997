"""The one boundary where failures of the layer below become ProxyErrors.

litellm's exceptions (and the aiohttp/httpx errors under them), the direct path's own errors
(`proxy.upstream.http1`: ConnectionError, TimeoutError, MalformedAnswer) and its non-200 answers come
here, so one failure reads the same on both paths. Rows are tried in order, most specific first.
A library's rows exist once it is loaded (none of its exceptions can exist before), so this
module imports none of them, least of all litellm (seconds to import).

    translate(exc)                                  a ProxyError passes unchanged
    ├── openai   APITimeoutError (litellm Timeout)  UpstreamTimeout 504
    │            APIConnectionError                 UpstreamError 502 "Could not reach ..."
    │            OpenAIError, litellm's own errors  by their status_code, as from_status
    ├── httpx    TimeoutException                   UpstreamTimeout 504
    │            HTTPStatusError                    by its status, as from_status
    │            DecodingError, InvalidURL, StreamError, ...  UpstreamError 502 "... failed"
    │            HTTPError                          UpstreamError 502 "Could not reach ..."
    ├── aiohttp  ServerTimeoutError                 UpstreamTimeout 504
    │            ClientHttpProxyError               UpstreamError 502 "Could not reach ..."
    │            ClientResponseError                by its status, as from_status
    │            ClientError                        UpstreamError 502 "Could not reach ..."
    │            EofStream, WebSocketError, ...     UpstreamError 502 "... failed"
    ├── TimeoutError (asyncio's too)                UpstreamTimeout 504
    ├── ConnectionError                             UpstreamError 502 "Could not reach ..."
    └── anything else                               UpstreamError 502 "... failed: <class>"

    from_status(status, content, headers)           message: the provider's own, else "HTTP <status>"
    ├── 429                  UpstreamRateLimited 429, retry-after and retry-after-ms kept
    ├── 408, 504             UpstreamTimeout 504
    ├── 401 / 403            UpstreamError 502: credentials rejected / access denied (no provider text)
    ├── 404                  UpstreamError 502 "does not know this model"
    ├── 400, 409, 413, 422   UpstreamRejected: that status, the provider's message alone
    └── any other            UpstreamError 502 "... failed"

The access line's `error` reason (`proxy.errors.error_reason`) says which row answered:
`upstream_unreachable`, `upstream_timeout`, `upstream_status_<the provider's status>`
(401, 404, 422, 429, 500, ...) or `upstream_failed` (anything else: a broken answer).
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson

from proxy.errors import ProxyError, UpstreamError, UpstreamRateLimited, UpstreamRejected, UpstreamTimeout

log = logging.getLogger("llmcp.upstream")

_LIBRARIES = ("openai", "litellm", "httpx", "aiohttp")
_REJECTED = frozenset({400, 409, 413, 422})  # the client's input, not the provider, is at fault
_KEPT_HEADERS = ("retry-after", "retry-after-ms")
# litellm wraps the provider's words in class names ("litellm.RateLimitError: RateLimitError:
# OpenAIException - slow down", "AnthropicException BadGatewayError - {...}") and advice.
_LITELLM_PREFIX = re.compile(r"litellm\.\w+: |Timeout Error: |\w+(?:Error|Exception)(?:: | - | \w+ - )")
_LITELLM_SUFFIX = re.compile(r"\.? Handle with `litellm\.\w+`\.$")
# Classes outside the main tree of each library, by name: names come and go between versions.
_LITELLM_OWN = (  # not openai SDK errors: litellm's proxy, router and guardrail features
    *("BudgetExceededError", "GuardrailRaisedException", "BlockedPiiEntityError", "ModelNotMappedError"),
    *("ModifyResponseException", "SensitiveDataRouteException", "ToolLoopMaxRoundsExceeded"),
    *("RouterRateLimitError", "RouterRateLimitErrorBasic"),
)
_HTTPX_MISUSE = ("DecodingError", "TooManyRedirects", "InvalidURL", "CookieConflict", "StreamError")
_AIOHTTP_ODD = (
    *("EofStream", "WebSocketError", "WSMessageTypeError"),
    *("BadContentDispositionHeader", "BadContentDispositionParam"),  # warnings, never raised to us
)


class Row(NamedTuple):
    classes: tuple[type[BaseException], ...]
    build: Callable[[Any], ProxyError]


def translate(exc: BaseException) -> ProxyError:
    """The ProxyError a client sees for a failure of the layer below (`raise ... from exc`).
    A failure to reach or hear from the provider names only its kind and the error's class:
    its text (hosts, ports, object reprs) goes to the server's log, keys redacted."""
    if isinstance(exc, ProxyError):
        return exc
    row = row_for(type(exc))
    error = row.build(exc) if row else _failed(type(exc).__name__)
    if error.status >= 500:
        log.warning("upstream call failed (%s): %s", error.message, _redacted(_detail(exc)))
    return error


def from_status(status: int, content: bytes, headers: Mapping[str, str]) -> ProxyError:
    """A non-200 answer of an OpenAI-compatible server (the direct route), read for the
    provider's own message. Logged like `translate`'s failures when the provider, not the
    client, is at fault: a rejected key is in the server's log, not only in a client's."""
    error = _status_answer(status, content, headers)
    if error.status >= 500:
        log.warning("upstream answered HTTP %s: %s", status, error.message)
    return error


def _status_answer(status: int, content: bytes, headers: Mapping[str, str]) -> ProxyError:
    return _by_status(status, _json_error_text(content), headers)


def row_for(exc_class: type[BaseException]) -> Row | None:
    """The row that maps `exc_class`, or None when it would fall to the generic failure."""
    loaded = tuple(name in sys.modules for name in _LIBRARIES)
    return next((row for row in _table(*loaded) if issubclass(exc_class, row.classes)), None)


def _by_status(status: int, message: str | None, headers: Mapping[str, str]) -> ProxyError:
    """The status rules both paths share: litellm's errors come here by their status_code.
    The access line's reason keeps the provider's status (`upstream_status_401`)."""
    error = _status_error(status, message or f"HTTP {status}", headers)
    if not isinstance(error, UpstreamTimeout):
        error.reason = f"upstream_status_{status}"
    return error


def _status_error(status: int, message: str, headers: Mapping[str, str]) -> ProxyError:
    if status == 429:
        lower = {k.lower(): v for k, v in headers.items()}
        kept = {k: str(lower[k]) for k in _KEPT_HEADERS if lower.get(k)}
        return UpstreamRateLimited(f"The upstream provider is rate limiting: {message}", headers=kept)
    if status in (408, 504):
        return _timed_out(message)
    # No provider text for these two: it can quote part of the server's own key back.
    if status == 401:
        return UpstreamError("The upstream provider rejected the proxy's credentials for this model.")
    if status == 403:
        return UpstreamError("The upstream provider denied the proxy access to this model.")
    if status == 404:
        return UpstreamError(f"The upstream provider does not know this model: {message}")
    if status in _REJECTED:
        return UpstreamRejected(message, status=status)
    return _failed(message)


def _timed_out(detail: str) -> UpstreamTimeout:
    return UpstreamTimeout(f"The upstream provider timed out: {detail}")


def _unreachable(detail: str) -> UpstreamError:
    error = UpstreamError(f"Could not reach the upstream provider: {detail}")
    error.reason = "upstream_unreachable"
    return error


def _failed(detail: str) -> UpstreamError:
    return UpstreamError(f"The upstream provider failed: {detail}")


_SECRET_IN_URL = re.compile(r"([?&](?:key|api[-_]?key|access_token|token)=)[^&\s'\"]+", re.IGNORECASE)


def _redacted(text: str) -> str:
    """Keys some providers take in the URL (Gemini's `?key=`), blanked for the log."""
    return _SECRET_IN_URL.sub(r"\1[redacted]", text)


def _detail(exc: BaseException) -> str:
    """A transport error as its class and message (never a repr)."""
    try:
        text = str(exc).strip()
    except Exception:  # a half-built exception; translating must not fail in turn
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error_text(data: object) -> str | None:
    """The provider's message in an OpenAI `{"error": {"message"}}`, Anthropic or vLLM body."""
    if isinstance(data, dict):
        data = data.get("error", data)
        if isinstance(data, dict):
            data = data.get("message")
    if isinstance(data, str) and data.strip():
        return data.strip()
    return None


def _json_error_text(raw: bytes | str) -> str | None:
    try:
        return _error_text(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


def _message(exc: BaseException) -> str:
    """A litellm (or openai) error as the provider's own words, without litellm's prefixes."""
    if found := _error_text(getattr(exc, "body", None)):
        return found
    text = str(getattr(exc, "message", None) or exc).strip()
    if text.startswith("litellm."):
        while prefix := _LITELLM_PREFIX.match(text):
            text = text[prefix.end() :]
        text = _LITELLM_SUFFIX.sub("", text)
    if text.startswith("{"):
        text = _json_error_text(text) or text
    return text or type(exc).__name__


def _litellm_status(exc: BaseException) -> ProxyError:
    status = getattr(exc, "status_code", None)
    # A 429's headers are on `response` for some providers, only kept aside for others.
    aside = getattr(exc, "litellm_response_headers", None) or {}
    on_response = getattr(getattr(exc, "response", None), "headers", None) or {}
    headers = {k.lower(): v for source in (aside, on_response) for k, v in source.items() if v}
    return _by_status(status if isinstance(status, int) else 500, _message(exc), headers)


def _httpx_status(exc: Any) -> ProxyError:
    response = exc.response
    try:
        content = response.content
    except RuntimeError:  # httpx.ResponseNotRead: a streamed answer's body was never read
        content = b""
    return _status_answer(response.status_code, content, response.headers)  # translate logs it


def _present(names: tuple[str, ...], *modules: object) -> tuple[type[BaseException], ...]:
    """The named classes this version of a library has, wherever it exports them."""
    found = (getattr(module, name, None) for name in names for module in modules)
    return tuple(dict.fromkeys(cls for cls in found if cls is not None))


@functools.cache
def _table(openai: bool, litellm: bool, httpx: bool, aiohttp: bool) -> tuple[Row, ...]:
    """The rows for the libraries loaded now, built once per combination, most specific first."""
    rows: list[Row] = []
    if openai:  # litellm's errors subclass the openai SDK's
        sdk = sys.modules["openai"]
        own = (sdk.OpenAIError,)
        if litellm:
            own += _present(_LITELLM_OWN, sys.modules.get("litellm.exceptions"), sys.modules["litellm"])
        rows += [
            Row((sdk.APITimeoutError,), lambda e: _timed_out(_message(e))),
            Row((sdk.APIConnectionError,), lambda e: _unreachable(type(e).__name__)),
            Row(own, _litellm_status),
        ]
    if httpx:
        hx = sys.modules["httpx"]
        rows += [
            Row((hx.TimeoutException,), lambda e: _timed_out(type(e).__name__)),
            Row((hx.HTTPStatusError,), _httpx_status),
            Row(_present(_HTTPX_MISUSE, hx), lambda e: _failed(_detail(e))),
            Row((hx.HTTPError,), lambda e: _unreachable(type(e).__name__)),
        ]
    if aiohttp:
        aio = sys.modules["aiohttp"]
        rows += [
            Row((aio.ServerTimeoutError,), lambda e: _timed_out(type(e).__name__)),
            Row((aio.ClientHttpProxyError,), lambda e: _unreachable(type(e).__name__)),
            Row((aio.ClientResponseError,), lambda e: _by_status(e.status, e.message, e.headers or {})),
            Row((aio.ClientError,), lambda e: _unreachable(type(e).__name__)),
            Row(_present(_AIOHTTP_ODD, aio), lambda e: _failed(_detail(e))),
        ]
    rows += [
        Row((TimeoutError,), lambda e: _timed_out(type(e).__name__)),
        Row((ConnectionError,), lambda e: _unreachable(type(e).__name__)),
    ]
    return tuple(row for row in rows if row.classes)
