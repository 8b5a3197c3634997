"""The upstream error table (proxy.upstream.errors), like httpx's test_httpcore_all_exceptions_mapped.

Every exception class litellm, aiohttp and httpx export has an explicit row of the right kind;
the status rules hold; and a provider's error reads the same through litellm as when the same
answer is read directly, so the two upstream paths cannot drift apart again.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import aiohttp
import aiohttp.client_exceptions
import aiohttp.client_reqrep
import httpx
import orjson
import pytest
import respx
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import (
    ProxyError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    error_reason,
)
from proxy.upstream.errors import from_status, row_for, translate

CREDENTIALS = "The upstream provider rejected the proxy's credentials for this model."
DENIED = "The upstream provider denied the proxy access to this model."
UNREACHABLE = "Could not reach the upstream provider: "
REQUEST = httpx.Request("POST", "http://upstream.test/v1/chat/completions")


@pytest.fixture(scope="module")
def litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no internet here
    import litellm

    return litellm


def exported(*modules: ModuleType, library: str) -> set[type[BaseException]]:
    """The public exception classes the modules export that the library defines itself."""
    return {
        obj
        for module in modules
        for name in dir(module)
        if not name.startswith("_")
        and isinstance(obj := getattr(module, name), type)
        and issubclass(obj, BaseException)
        and obj.__module__.split(".")[0] == library
    }


def subclasses(base: type[BaseException]) -> set[type[BaseException]]:
    found = {base}
    for sub in base.__subclasses__():
        found |= subclasses(sub)
    return found


@pytest.fixture(scope="module")
def exceptions(litellm: Any) -> dict[str, set[type[BaseException]]]:
    return {
        "litellm": exported(litellm.exceptions, litellm, library="litellm"),
        "aiohttp": exported(aiohttp, aiohttp.client_exceptions, library="aiohttp"),
        "httpx": exported(httpx, library="httpx") | subclasses(httpx.HTTPError),
    }


@pytest.mark.parametrize("library", ["litellm", "aiohttp", "httpx"])
def test_every_exception_class_is_mapped(
    exceptions: dict[str, set[type[BaseException]]], library: str
) -> None:
    classes = exceptions[library]
    assert len(classes) > 10, classes  # the enumeration found the library's exceptions
    unmapped = sorted(cls.__qualname__ for cls in classes if row_for(cls) is None)
    assert not unmapped, f"{library} exceptions that would fall to the generic failure: {unmapped}"


@pytest.mark.parametrize("cls", [TimeoutError, asyncio.TimeoutError, ConnectionError, ConnectionResetError])
def test_builtin_transport_errors_are_mapped(cls: type[BaseException]) -> None:
    assert row_for(cls) is not None


def build(cls: type[BaseException]) -> BaseException:
    """A real instance, made the way its library makes one."""
    fields = aiohttp.client_reqrep.ConnectionKey._fields
    where: dict[str, Any] = {f: {"host": "upstream.test", "port": 443}.get(f) for f in fields}
    key = aiohttp.client_reqrep.ConnectionKey(**where)
    litellm_args = {"message": "OpenAIException - boom", "model": "x", "llm_provider": "openai"}
    make: Any = cls
    attempts: list[Callable[[], BaseException]] = [
        lambda: make("boom"),
        lambda: make(**litellm_args),
        lambda: make(key, OSError(111, "Connection refused")),
        lambda: make("/run/upstream.sock", key, OSError(111, "Connection refused")),
    ]
    for attempt in attempts:
        try:
            return attempt()
        except TypeError:
            continue
    raise TypeError(f"cannot build {cls}")


def named(exceptions: dict[str, set[type[BaseException]]], word: str) -> list[type[BaseException]]:
    return sorted((c for classes in exceptions.values() for c in classes if word in c.__name__), key=str)


def test_every_timeout_class_is_a_504(exceptions: dict[str, set[type[BaseException]]]) -> None:
    timeouts = named(exceptions, "Timeout")
    assert len(timeouts) >= 9, timeouts  # httpx 5, aiohttp 3, litellm 1
    for cls in timeouts:
        error = translate(build(cls))
        assert isinstance(error, UpstreamTimeout) and error.status == 504, cls


def test_every_connection_error_is_unreachable(exceptions: dict[str, set[type[BaseException]]]) -> None:
    connection = [c for c in named(exceptions, "Connect") if "Timeout" not in c.__name__]
    assert len(connection) >= 8, connection
    for cls in connection:
        error = translate(build(cls))
        assert type(error) is UpstreamError and error.status == 502, cls
        assert error.message.startswith(UNREACHABLE), (cls, error.message)


def test_every_rate_limit_class_is_a_429_keeping_retry_after(
    litellm: Any, exceptions: dict[str, set[type[BaseException]]]
) -> None:
    headers = {"retry-after": "3", "retry-after-ms": "3000", "set-cookie": "never=forwarded"}
    response = httpx.Response(429, headers=headers, request=REQUEST)
    limits = named(exceptions, "RateLimit")
    assert len(limits) >= 4, limits
    for cls in limits:
        make: Any = cls
        if cls is litellm.RouterRateLimitError:
            exc = make("x", cooldown_time=1.0, enable_pre_call_checks=False, cooldown_list=[])
        elif issubclass(cls, litellm.exceptions.RateLimitError):
            message = "RateLimitError: OpenAIException - slow down"
            exc = make(message=message, llm_provider="openai", model="x", response=response)
        else:
            exc = build(cls)
        error = translate(exc)
        assert type(error) is UpstreamRateLimited and error.status == 429, cls
        if isinstance(exc, litellm.exceptions.RateLimitError):
            assert error.message == "The upstream provider is rate limiting: slow down"
            assert error.headers == {"retry-after": "3", "retry-after-ms": "3000"}
    # Anthropic's 429 keeps its headers beside an empty response.
    aside = litellm.exceptions.RateLimitError(
        message="AnthropicException - {}", llm_provider="anthropic", model="x"
    )
    aside.litellm_response_headers = httpx.Headers({"Retry-After": "5"})
    assert translate(aside).headers == {"retry-after": "5"}


def body(message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}})


@pytest.mark.parametrize(
    "status, content, kind, answer, message",
    [
        (400, body("bad temperature"), UpstreamRejected, 400, "bad temperature"),
        (409, body("conflict"), UpstreamRejected, 409, "conflict"),
        (413, body("too big"), UpstreamRejected, 413, "too big"),
        (422, body("unprocessable"), UpstreamRejected, 422, "unprocessable"),
        (
            400,
            b'{"type":"error","error":{"message":"anthropic says no"}}',
            UpstreamRejected,
            400,
            "anthropic says no",
        ),
        (
            400,
            b'{"object":"error","message":"vllm says no","code":400}',
            UpstreamRejected,
            400,
            "vllm says no",
        ),
        (400, b'{"error":"a plain string"}', UpstreamRejected, 400, "a plain string"),
        (400, b"[1, 2]", UpstreamRejected, 400, "HTTP 400"),
        (401, body("Incorrect API key provided: sk-abc***xyz"), UpstreamError, 502, CREDENTIALS),
        (403, body("not allowed"), UpstreamError, 502, DENIED),
        (
            404,
            body("no such model"),
            UpstreamError,
            502,
            "The upstream provider does not know this model: no such model",
        ),
        (408, b"", UpstreamTimeout, 504, "The upstream provider timed out: HTTP 408"),
        (504, b"<html>gateway</html>", UpstreamTimeout, 504, "The upstream provider timed out: HTTP 504"),
        (402, body("no credit"), UpstreamError, 502, "The upstream provider failed: no credit"),
        (500, body("boom"), UpstreamError, 502, "The upstream provider failed: boom"),
        (503, b"not json", UpstreamError, 502, "The upstream provider failed: HTTP 503"),
    ],
)
def test_from_status(status: int, content: bytes, kind: type[ProxyError], answer: int, message: str) -> None:
    error = from_status(status, content, {})
    assert (type(error), error.status, error.message, error.headers) == (kind, answer, message, {})


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "7", "retry-after-ms": "7000", "x-other": "1"},
        {"Retry-After": "7", "Retry-After-Ms": "7000"},
        httpx.Headers({"Retry-After": "7", "retry-after-ms": "7000"}),
        CIMultiDictProxy(CIMultiDict({"Retry-After": "7", "RETRY-AFTER-MS": "7000"})),
    ],
)
def test_a_429_keeps_retry_after(headers: Any) -> None:
    error = from_status(429, body("slow down"), headers)
    assert type(error) is UpstreamRateLimited and error.status == 429
    assert error.message == "The upstream provider is rate limiting: slow down"
    assert error.headers == {"retry-after": "7", "retry-after-ms": "7000"}
    assert from_status(429, b"", {}).headers == {}


FAILED = "The upstream provider failed: "
OVERLOADED = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
ANTHROPIC_400 = '{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}'


def reply(status: int) -> httpx.Response:
    return httpx.Response(status, request=REQUEST)


# litellm class, the message litellm gives it, other arguments -> what the client sees
LITELLM_CASES = [
    (
        "BadRequestError",
        "OpenAIException - bad temperature",
        {"response": reply(400)},
        UpstreamRejected,
        400,
        "bad temperature",
    ),
    (
        "BadRequestError",
        f"AnthropicException - {ANTHROPIC_400}",
        {},
        UpstreamRejected,
        400,
        "max_tokens: too big",
    ),
    (
        "BadRequestError",
        "OpenAIException - x",
        {"body": {"message": "from the body"}},
        UpstreamRejected,
        400,
        "from the body",
    ),
    ("ContextWindowExceededError", "OpenAIException - too long", {}, UpstreamRejected, 400, "too long"),
    (
        "UnprocessableEntityError",
        "OpenAIException - no",
        {"response": reply(422)},
        UpstreamRejected,
        422,
        "no",
    ),
    (
        "APIError",
        "APIError: OpenAIException - too big",
        {"status_code": 413},
        UpstreamRejected,
        413,
        "too big",
    ),
    (
        "AuthenticationError",
        "AnthropicException - invalid x-api-key sk-ant-1",
        {},
        UpstreamError,
        502,
        CREDENTIALS,
    ),
    (
        "PermissionDeniedError",
        "BedrockException PermissionDeniedError - no",
        {"response": reply(403)},
        UpstreamError,
        502,
        DENIED,
    ),
    ("APIError", "APIError: OpenAIException - no", {"status_code": 403}, UpstreamError, 502, DENIED),
    (
        "NotFoundError",
        "NotFoundError: OpenAIException - no model x",
        {},
        UpstreamError,
        502,
        "The upstream provider does not know this model: no model x",
    ),
    (
        "Timeout",
        "Timeout Error: OpenAIException - gateway",
        {"exception_status_code": 504},
        UpstreamTimeout,
        504,
        "The upstream provider timed out: gateway",
    ),
    (
        "Timeout",
        "AnthropicException Timeout - slow",
        {},
        UpstreamTimeout,
        504,
        "The upstream provider timed out: slow",
    ),
    (
        "APIConnectionError",
        "OpenAIException - Connection error.",
        {},
        UpstreamError,
        502,
        UNREACHABLE + "APIConnectionError",  # its text (hosts, ssl context reprs) goes to the log
    ),
    (
        "InternalServerError",
        f"AnthropicException - {OVERLOADED}. Handle with `litellm.InternalServerError`.",
        {},
        UpstreamError,
        502,
        FAILED + "Overloaded",
    ),
    (
        "BadGatewayError",
        "AnthropicException BadGatewayError - bad gateway",
        {},
        UpstreamError,
        502,
        FAILED + "bad gateway",
    ),
    (
        "ServiceUnavailableError",
        "OpenAIException - overloaded",
        {},
        UpstreamError,
        502,
        FAILED + "overloaded",
    ),
    ("PaymentRequiredError", "AnthropicException - no credit", {}, UpstreamError, 502, FAILED + "no credit"),
    ("APIResponseValidationError", "not a chat answer", {}, UpstreamError, 502, FAILED + "not a chat answer"),
]


@pytest.mark.parametrize("name, text, extra, kind, status, message", LITELLM_CASES)
def test_translate_litellm(
    litellm: Any,
    name: str,
    text: str,
    extra: dict[str, Any],
    kind: type[ProxyError],
    status: int,
    message: str,
) -> None:
    exc = getattr(litellm.exceptions, name)(message=text, model="x", llm_provider="openai", **extra)
    error = translate(exc)
    assert (type(error), error.status, error.message) == (kind, status, message)


STATUSES = [400, 401, 402, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504, 529]


@pytest.fixture
def litellm_over_httpx(litellm: Any) -> Iterator[Any]:
    """litellm's calls over httpx, where respx answers them."""
    before = (litellm.disable_aiohttp_transport, litellm.suppress_debug_info)
    litellm.disable_aiohttp_transport = litellm.suppress_debug_info = True
    yield litellm
    litellm.disable_aiohttp_transport, litellm.suppress_debug_info = before


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("status", STATUSES)
def test_litellm_reads_an_error_answer_as_the_direct_path_does(
    litellm_over_httpx: Any, provider: str, status: int
) -> None:
    error = {"type": "invalid_request_error", "message": f"provider says {status}"}
    shape = {"type": "error", "error": error} if provider == "anthropic" else {"error": error}
    answer = httpx.Response(status, json=shape, headers={"retry-after": "3"})

    async def call() -> BaseException:
        with respx.mock() as mock:
            mock.post(url__regex=r".*").mock(return_value=answer)
            try:
                await litellm_over_httpx.acompletion(
                    model=f"{provider}/claude-3-5-haiku-latest" if provider == "anthropic" else "openai/x",
                    messages=[{"role": "user", "content": "hi"}],
                    api_base="http://upstream.test/v1",
                    api_key="sk-test",
                    num_retries=0,
                    max_retries=0,
                )
            except Exception as exc:
                return exc
        raise AssertionError("litellm answered an error status")

    via_litellm = translate(asyncio.run(call()))
    direct = from_status(status, answer.content, answer.headers)
    assert (type(via_litellm), via_litellm.message, via_litellm.headers) == (
        type(direct),
        direct.message,
        direct.headers,
    )
    if (provider, status) != ("anthropic", 413):  # litellm itself reports Anthropic's 413 as a 400
        assert via_litellm.status == direct.status


def test_a_proxy_error_passes_through() -> None:
    error = UpstreamError("already translated")
    assert translate(error) is error


def test_anything_else_is_a_502_that_leaks_nothing() -> None:
    error = translate(KeyError("<object at 0x7f> internals"))
    assert type(error) is UpstreamError and error.message == "The upstream provider failed: KeyError"
    assert row_for(KeyError) is None


def test_status_errors_of_the_http_libraries_follow_the_status_rules() -> None:
    read = httpx.Response(400, json={"error": {"message": "bad"}}, request=REQUEST)
    assert translate(httpx.HTTPStatusError("x", request=REQUEST, response=read)).message == "bad"
    unread = httpx.Response(
        429, headers={"retry-after": "2"}, request=REQUEST, stream=httpx.ByteStream(b"{}")
    )
    limited = translate(httpx.HTTPStatusError("x", request=REQUEST, response=unread))
    assert type(limited) is UpstreamRateLimited and limited.headers == {"retry-after": "2"}
    headers = CIMultiDictProxy(CIMultiDict({"Retry-After": "4"}))
    aio = aiohttp.ClientResponseError(None, (), status=429, message="Too Many Requests", headers=headers)  # type: ignore[arg-type]
    assert translate(aio).headers == {"retry-after": "4"}
    info = aiohttp.RequestInfo(yarl.URL("http://upstream.test/v1"), "POST", CIMultiDictProxy(CIMultiDict()))
    proxy = aiohttp.ClientHttpProxyError(info, (), status=403, message="Forbidden")
    assert translate(proxy).message.startswith(UNREACHABLE)  # the HTTP proxy's 403, not the provider's


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_real_refused_connections_are_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/v1?key=sk-in-the-url"
    with pytest.raises(httpx.ConnectError) as refused:
        httpx.post(url)

    async def aiohttp_post() -> BaseException:
        async with aiohttp.ClientSession() as session:
            try:
                await session.post(url)
            except aiohttp.ClientError as exc:
                return exc
        raise AssertionError("connected to a closed port")

    for exc in (refused.value, asyncio.run(aiohttp_post())):
        caplog.clear()
        with caplog.at_level("WARNING", logger="llmcp.upstream"):
            error = translate(exc)
        assert type(error) is UpstreamError and error.message == UNREACHABLE + type(exc).__name__
        # The client learns the kind of failure; where it happened is for the server's log.
        assert str(port) not in error.message and "127.0.0.1" not in error.message
        [line] = caplog.records
        assert "sk-in-the-url" not in line.getMessage()
        if "127.0.0.1" in str(exc):
            assert "127.0.0.1" in line.getMessage()


def test_translating_imports_none_of_the_libraries() -> None:
    """Importing litellm costs seconds: the direct path translates without it."""
    code = (
        "import sys, proxy.upstream.errors as e; "
        "assert not {'httpx', 'aiohttp', 'openai', 'litellm'} & set(sys.modules); "
        "import httpx; e.translate(httpx.ConnectError('x')); e.translate(ValueError()); "
        "e.from_status(500, b'', {}); sys.exit('litellm' in sys.modules or 'openai' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_keys_in_urls_never_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    failure = ConnectionError("POST https://generativelanguage.test/v1/models?key=AIzaSECRET&alt=sse refused")
    with caplog.at_level("WARNING", logger="llmcp.upstream"):
        error = translate(failure)
    assert error.message == UNREACHABLE + "ConnectionError"
    [line] = caplog.records
    assert "AIzaSECRET" not in line.getMessage() and "key=[redacted]&alt=sse" in line.getMessage()


def test_every_failure_kind_has_its_access_line_reason(
    exceptions: dict[str, set[type[BaseException]]],
) -> None:
    """The reason the access line carries (proxy.errors.error_reason) for every class of
    every library: the kind of failure, on both upstream paths alike."""
    for cls in named(exceptions, "Timeout"):
        assert error_reason(translate(build(cls))) == "upstream_timeout", cls
    for cls in [c for c in named(exceptions, "Connect") if "Timeout" not in c.__name__]:
        assert error_reason(translate(build(cls))) == "upstream_unreachable", cls
    for status in (400, 401, 403, 404, 409, 413, 422, 429, 500, 502, 503):
        assert error_reason(from_status(status, b"{}", {})) == f"upstream_status_{status}", status
    for status in (408, 504):
        assert error_reason(from_status(status, b"", {})) == "upstream_timeout"
    assert error_reason(translate(ValueError("odd"))) == "upstream_failed"


def test_reasons_of_the_proxys_own_errors() -> None:
    from proxy.errors import (
        BodyTooLarge,
        InvalidRequest,
        ModelNotConfigured,
        RateLimited,
        ServiceUnavailable,
        StoreUnavailable,
    )

    assert error_reason(InvalidRequest("bad temperature", param="temperature")) == "bad_request"
    assert error_reason(InvalidRequest("too deep", code="nesting_too_deep")) == "nesting_too_deep"
    assert error_reason(BodyTooLarge("big")) == "request_too_large"
    assert error_reason(RateLimited("slow down", kind="tokens")) == "rate_limited_tokens"
    assert error_reason(RateLimited("slow down", kind="requests")) == "rate_limited_requests"
    assert error_reason(ModelNotConfigured("no key")) == "model_not_configured"
    assert error_reason(ServiceUnavailable("redis")) == "service_unavailable"
    assert error_reason(StoreUnavailable("redis")) == "redis_unavailable"
    assert error_reason(RuntimeError("boom: secret")) == "internal_error"


def test_a_status_the_provider_is_at_fault_for_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """The direct route's non-200 answers: a rejected key or a provider failure reaches the
    server's log (not only the client); the client's own 4xx does not; never the key."""
    with caplog.at_level("WARNING", logger="llmcp.upstream"):
        from_status(401, b'{"error": {"message": "Incorrect API key provided: sk-abc***xyz"}}', {})
        from_status(500, b'{"error": {"message": "overloaded"}}', {})
        from_status(422, b'{"error": {"message": "bad field"}}', {})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "upstream answered HTTP 401: The upstream provider rejected the proxy's credentials for this model.",
        "upstream answered HTTP 500: The upstream provider failed: overloaded",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="llmcp.upstream"):
        response = httpx.Response(500, json={"error": {"message": "overloaded"}}, request=REQUEST)
        translate(httpx.HTTPStatusError("boom", request=REQUEST, response=response))
    assert len(caplog.records) == 1  # translate's line only
