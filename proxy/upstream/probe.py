"""`doctor`'s look at each configured model's provider: is it reachable, and is the key
accepted? Asked of the provider's models endpoint (a free GET that needs the key: OpenAI
and every OpenAI-compatible server, Anthropic), never with a paid call. The demo model is
fine without a network; a model with no key where one is needed is the warning
`check-config` gives; a provider with no models endpoint known here is not asked.

The HTTP client is injected (`Getter`: the server's HTTP/1.1 transport, or the tests'
httpx one that respx sees), like the direct upstream's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import orjson

from proxy.config import ModelConfig
from proxy.errors import ProxyError, UpstreamTimeout
from proxy.upstream.credentials import PROVIDER_KEYS, missing_key
from proxy.upstream.direct import upstream_model
from proxy.upstream.errors import row_for
from proxy.upstream.transport import Headers

Verdict = Literal["ok", "warn", "fail"]
_OPENAI = "https://api.openai.com/v1"
_ANTHROPIC = "https://api.anthropic.com"
_ANTHROPIC_VERSION = "2023-06-01"


class Getter(Protocol):
    async def get(self, url: str, headers: dict[str, str], timeout: float) -> tuple[int, Headers, bytes]: ...


@dataclass(frozen=True, slots=True)
class Check:
    """One line of `doctor`'s report."""

    verdict: Verdict
    subject: str
    detail: str

    def line(self) -> str:
        return f"{self.verdict:<4} {self.subject}: {self.detail}"


async def probe_model(
    model: ModelConfig, http: Getter, environ: Mapping[str, str] | None = None, timeout: float = 10.0
) -> Check:
    """Whether `model`'s provider answers its models endpoint with the configured key."""
    environ = os.environ if environ is None else environ
    subject = f"model {model.name} ({model.litellm_model})"
    if model.is_demo:
        return Check("ok", subject, "built-in demo model, answered by the proxy itself (no network)")
    if (missing := missing_key(model, environ)) is not None:
        return Check("warn", subject, f"no API key: {missing.advice()}")
    request = _models_request(model, environ)
    if request is None:
        return Check("warn", subject, "not checked: no models endpoint is known for this provider")
    url, headers = request
    try:
        status, _, content = await http.get(url, headers, timeout)
    except Exception as exc:  # the kind of failure and the class: hosts and ports are in the url
        kind = "timed out" if isinstance(translate_quietly(exc), UpstreamTimeout) else "unreachable"
        return Check("fail", subject, f"{url} {kind} ({type(exc).__name__})")
    return _verdict(subject, url, status, content, _wanted_id(model))


def translate_quietly(exc: BaseException) -> ProxyError | None:
    """The error table's reading of `exc` (without its log line: this is a report)."""
    row = row_for(type(exc))
    return row.build(exc) if row else None


def _models_request(model: ModelConfig, environ: Mapping[str, str]) -> tuple[str, dict[str, str]] | None:
    provider = model.litellm_model.split("/", 1)[0]
    key = model.api_key or _env_key(model, provider, environ)
    if model.speaks_openai:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return f"{(model.api_base or _OPENAI).rstrip('/')}/models", headers
    if provider == "anthropic":
        headers = {"anthropic-version": _ANTHROPIC_VERSION}
        if key:
            headers["x-api-key"] = key
        base = (model.api_base or _ANTHROPIC).rstrip("/").removesuffix("/v1")
        return f"{base}/v1/models", headers
    return None


def _env_key(model: ModelConfig, provider: str, environ: Mapping[str, str]) -> str | None:
    """The key the upstream would fall back to: OPENAI_API_KEY at OpenAI's own API (the
    direct upstream), the provider's variable through litellm."""
    if model.speaks_openai and not model.via_litellm:
        base = model.api_base or _OPENAI
        if "//api.openai.com" not in base:
            return None
    for name in PROVIDER_KEYS.get(provider, ()):
        if environ.get(name):
            return environ[name]
    return None


def _wanted_id(model: ModelConfig) -> str | None:
    """The id the models list should hold (OpenAI-compatible servers list what they serve;
    Anthropic lists dated ids, not the `-latest` aliases: not compared there)."""
    return upstream_model(model) if model.speaks_openai else None


def _verdict(subject: str, url: str, status: int, content: bytes, wanted: str | None) -> Check:
    if status in (401, 403):
        return Check("fail", subject, f"reachable, but the key was refused (HTTP {status} from {url})")
    if status == 404:
        return Check("warn", subject, f"reachable, but {url} is not there (HTTP 404): key not checked")
    if status != 200:
        return Check("fail", subject, f"{url} answered HTTP {status}")
    try:
        data = orjson.loads(content).get("data")
        ids = [m.get("id") for m in data if isinstance(m, dict)]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return Check("warn", subject, f"reachable, key accepted, but {url} did not list models")
    if wanted is None:
        return Check("ok", subject, f"reachable, key accepted ({len(ids)} models listed)")
    if wanted not in ids:
        return Check(
            "warn", subject, f"reachable, key accepted, but {wanted!r} is not among its {len(ids)} models"
        )
    return Check("ok", subject, f"reachable, key accepted, {wanted!r} listed")
