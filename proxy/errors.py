"""Every error the proxy can answer with, in one place.

Each class carries the HTTP status and the OpenAI error `type`/`code` it renders as;
`proxy.http.app` turns any of them into `{"error": {"message", "type", "param", "code"}}`.
Domain code raises these; nothing else reaches a client.

    ProxyError                      500 server_error
    ├── InvalidRequest              400 invalid_request_error
    │   ├── MalformedJSON           400   code=invalid_json
    │   ├── BodyTooLarge            413   code=request_too_large
    │   ├── ModelNotFound           404   code=model_not_found
    │   └── ModelHasNoPrice         400   code=model_has_no_price (a tenant with a budget)
    ├── AuthenticationFailed        401   code=invalid_api_key
    ├── PermissionDenied            403   code=permission_denied
    ├── RouteNotFound               404   code=not_found
    ├── NoRecordedAnswer            404   code=no_recorded_answer (replay mode: a miss)
    ├── MethodNotAllowed            405   code=method_not_allowed
    ├── HeadersTooLarge             431   code=request_headers_too_large
    ├── Conflict                    409   code=conflict (e.g. a review item decided already)
    ├── RateLimited                 429   code=rate_limit_exceeded | request_too_large
    ├── BudgetExceeded              429 insufficient_quota (a spend budget; never retried)
    ├── ServiceUnavailable          503   code=service_unavailable
    └── UpstreamError               502 upstream_error
        ├── ModelNotConfigured      503   code=model_not_configured (no API key for its provider)
        ├── UpstreamTimeout         504   code=upstream_timeout
        ├── UpstreamRateLimited     429   code=rate_limit_exceeded (Retry-After kept)
        └── UpstreamRejected        4xx   the provider's own status for the client's input

    error_reason(exc)               the short reason the access line carries (`upstream_timeout`,
                                    `upstream_status_401`, `rate_limited_tokens`, `bad_request`, ...):
                                    a fixed word for the kind of failure, never the message text

    ConfigError                     not an HTTP error: stops startup / check-config with one line
    StoreUnavailable                not an HTTP error: Redis failed; callers degrade (an
                                    endpoint that cannot do without Redis answers 503)
"""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is unusable; the message names the field."""


class StoreUnavailable(Exception):
    """Redis could not be used for this call; the caller degrades instead of failing."""


# Error messages name the offending value; past this many characters it is cut short.
MAX_MESSAGE = 2000


class ProxyError(Exception):
    """Base of every error the proxy answers with."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    # Set where the failure is translated when the class alone does not say enough (an
    # upstream 401 and an unreachable host are both a 502); see error_reason().
    reason: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if len(message) > MAX_MESSAGE:  # a value echoed back (a 1 MiB model name) is cut short
            message = message[: MAX_MESSAGE - 1] + "…"
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        """The OpenAI error shape."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code: str | None = None


class MalformedJSON(InvalidRequest):
    code = "invalid_json"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


class ModelHasNoPrice(InvalidRequest):
    """A tenant with a budget asked for a model nothing prices: its spend could not be held."""

    code = "model_has_no_price"


class AuthenticationFailed(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class RouteNotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class NoRecordedAnswer(ProxyError):
    """Replay mode (`cache_mode: replay`) has no recorded answer and never calls the provider."""

    status = 404
    type = "invalid_request_error"
    code = "no_recorded_answer"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class HeadersTooLarge(ProxyError):
    status = 431
    type = "invalid_request_error"
    code = "request_headers_too_large"


class Conflict(ProxyError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class RateLimited(ProxyError):
    """The tenant's quota is spent; `type` is "requests" or "tokens" as OpenAI reports it."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.type = kind


class BudgetExceeded(ProxyError):
    """A spend budget (tenant or end user, day or month) cannot take this request: OpenAI's
    shape for a spent quota, with `x-should-retry: false` so the SDKs do not retry."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class ServiceUnavailable(ProxyError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamError(ProxyError):
    """The provider failed; the client did nothing wrong."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class ModelNotConfigured(UpstreamError):
    """The model's provider needs an API key the proxy does not have: the message names the
    environment variable to set (`proxy.upstream.credentials`). Raised instead of calling
    the provider, so nothing is spent on a call bound to be refused."""

    status = 503
    type = "server_error"
    code = "model_not_configured"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamRejected(UpstreamError):
    """The provider refused the client's input (its 4xx); the status is passed through."""

    status = 400
    type = "invalid_request_error"
    code = "upstream_rejected"


def error_reason(exc: BaseException) -> str:
    """A short, fixed reason for the access line: the kind of failure, never its message."""
    if isinstance(exc, ProxyError):
        if exc.reason:
            return exc.reason
        if isinstance(exc, RateLimited):
            return f"rate_limited_{exc.type}"
        if isinstance(exc, UpstreamRejected | UpstreamRateLimited):
            return f"upstream_status_{exc.status}"
        if isinstance(exc, UpstreamTimeout | ModelNotConfigured):
            return str(exc.code)
        if isinstance(exc, UpstreamError):
            return "upstream_failed"
        if 400 <= exc.status < 500:
            return exc.code or "bad_request"
        return exc.code or "internal_error"
    if isinstance(exc, StoreUnavailable):
        return "redis_unavailable"
    return "internal_error"
