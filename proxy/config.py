"""config.yaml -> frozen, validated settings.

Over 300 lines on purpose: this is the whole schema of config.yaml, one section class
after another in file order, so a reader finds every setting, its default and its bounds
in one place; the loader at the end is what turns the file into them.

The environment is passed in (never read from `os.environ` here) so tests hand over a
dict. Every failure is one `ConfigError` whose message names the field, e.g.
`tenants[0].api_keys[1]: environment variable ACME_KEY is not set`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from proxy.errors import ConfigError

_log = logging.getLogger("llmcp.config")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_SHA256_PREFIX = "sha256:"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # All request headers together; larger gets 431. (uvicorn's default parser, httptools,
    # sets no limit of its own; a reverse proxy in front should bound what it buffers.)
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    # A stream longer than this is ended with an error event (and not cached): each wait for
    # the provider's next chunk is bounded by upstream.timeout_seconds, the whole by this.
    max_stream_seconds: float = Field(600, gt=0)
    # Poll the config file this often and reload it when its content changes (an edit, a
    # ConfigMap update); 0 turns the watch off. SIGHUP and POST /admin/reload work either way.
    watch_config_seconds: float = Field(2.0, ge=0)
    # How long a worker started by a rolling restart may take to be ready before uvicorn
    # gives up on it and keeps the old one (uvicorn's own default of 5 s is about what
    # importing litellm takes).
    worker_start_timeout_seconds: int = Field(60, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_prompts: bool = False
    log_format: Literal["text", "json"] = "text"
    # One line per proxied request (request id, tenant, model, cache, status, latency);
    # written at INFO, so a log_level of warning or above turns it off.
    access_log: bool = True


class RedisConfig(_Strict):
    url: str | None = None
    key_prefix: str = Field("llmcp", pattern=_NAME)
    connect_timeout_ms: int = Field(1000, ge=1)
    timeout_ms: int = Field(500, ge=1)
    # A refused or reset connection opens the breaker at once; timeouts only after this many
    # in a row (a congested event loop can make one read late without Redis being slow).
    breaker_failures: int = Field(3, ge=1)
    # While Redis is failing, skip it for this long before probing again, so requests stop
    # paying the connection timeout one by one.
    retry_after_ms: int = Field(1000, ge=0)
    max_connections: int = Field(1024, ge=1)
    # Redis Cluster: redis-py's cluster client, seeded with the url's node(s). Every key a
    # script touches shares a {hash tag}, so the scripts run unchanged on a cluster.
    cluster: bool = False
    state_dir: str = ".llm-cache-proxy"
    embedded_maxmemory: str = "256mb"

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
            raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
        if url is not None and url.startswith("redis+sentinel://") and not urlsplit(url).path.strip("/"):
            raise ValueError("redis+sentinel:// needs the master's name: redis+sentinel://host:26379/<name>")
        return url


class L1Config(_Strict):
    """In-process cache in front of Redis (see proxy/l1.py); off by default."""

    enabled: bool = False
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    # Upper bound on how long an entry is trusted without Redis: covers what Redis does
    # silently (eviction). Overwrites and purges are published and take effect at once.
    max_age_ms: int = Field(60_000, ge=100)


class CacheConfig(_Strict):
    ttl_seconds: int = Field(3600, ge=1)
    max_ttl_seconds: int = Field(7 * 24 * 3600, ge=1)
    max_entry_bytes: int = Field(1024 * 1024, ge=256)
    # Answers at least this large are stored zlib-compressed (JSON shrinks 3-5x).
    compress_min_bytes: int = Field(2048, ge=0)
    scope: Literal["tenant", "shared"] = "tenant"
    l1: L1Config = L1Config()
    # Set OpenAI's `prompt_cache_key` on requests to OpenAI-API providers that carry none,
    # from a salted hash of the tenant (and end user): the provider then routes a tenant's
    # shared prefixes to the same prompt cache. Never part of this proxy's cache key.
    provider_prompt_cache_key: Literal["off", "tenant", "end_user"] = "off"
    provider_prompt_cache_salt: str = Field("", repr=False)

    @field_validator("provider_prompt_cache_key", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare `off` as false."""
        return "off" if value is False else value

    def namespace(self, tenant: str) -> str:
        """Where a tenant's answers live: its own namespace, or "shared" with scope: shared."""
        return tenant if self.scope == "tenant" else "shared"

    @model_validator(mode="after")
    def _ttl_within_cap(self) -> CacheConfig:
        if self.ttl_seconds > self.max_ttl_seconds:
            raise ValueError("ttl_seconds must not exceed max_ttl_seconds")
        return self


class UpstreamConfig(_Strict):
    timeout_seconds: float = Field(120.0, gt=0)
    # A client that hangs up mid-stream: cancel the provider call (stop paying for tokens
    # nobody reads), or finish it in the background and cache the answer for the next asker.
    on_client_disconnect: Literal["cancel", "finish"] = "cancel"

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "http_client" in data:
            raise ValueError(
                "http_client was removed (direct upstream calls always use the proxy's pooled HTTP client); "
                "delete the line"
            )
        return data


# litellm providers whose servers speak the OpenAI API, so they can be called directly.
OPENAI_COMPATIBLE = ("openai/", "text-completion-openai/")


class ModelConfig(_Strict):
    name: str = Field(pattern=r"^[^\s|{}]{1,128}$")
    litellm_model: str = Field(min_length=1)
    api_base: str | None = None
    api_key: str | None = Field(None, repr=False)
    cache_ttl_seconds: int | None = Field(None, ge=1)
    timeout_seconds: float | None = Field(None, gt=0)
    # USD per token, for "money saved"; if unset, the cost map bundled with litellm is used.
    input_cost_per_token: float | None = Field(None, ge=0)
    output_cost_per_token: float | None = Field(None, ge=0)
    # USD per prompt token the provider served from its own prompt cache; if unset, the
    # bundled map's cache-read price, else the input price (no discount known).
    cached_input_cost_per_token: float | None = Field(None, ge=0)
    # The most completion tokens one answer can have; a budget reserves this much for a
    # request that sets no max_tokens. If unset, the bundled map's value, else
    # rate_limit.default_max_tokens (a budget may then be overshot: see README).
    max_output_tokens: int | None = Field(None, ge=1)
    # Which tiktoken encoding estimates this model's tokens; guessed from the name if unset.
    tokenizer: Literal["cl100k_base", "o200k_base", "p50k_base"] | None = None

    # Embedding models: inputs longer than this are refused (400), and at most this many
    # inputs go upstream in one call (a larger batch of misses is split).
    max_input_tokens: int = Field(8191, ge=1)
    embedding_batch_size: int = Field(2048, ge=1)
    # How misses reach the provider: `direct` over the proxy's own HTTP client, relaying
    # an OpenAI-compatible server's answer (OpenAI, vLLM, Ollama's /v1, another proxy: a
    # litellm_model of `openai/<name>` or `text-completion-openai/<name>`, with or without
    # api_base); `litellm` translates for any other provider (Anthropic, Bedrock, Vertex,
    # Gemini, ...); `auto` (default) is direct for the OpenAI-compatible ones, else litellm.
    route: Literal["auto", "direct", "litellm"] = "auto"
    # Which parameter defaults fold into "not sent" for the cache key: `openai` (OpenAI's,
    # e.g. temperature 1), `none` (only the protocol's, e.g. n 1: the server picks its own
    # sampling defaults, as vLLM and Ollama do), `auto` (openai for OpenAI's own API and
    # Anthropic's, none for any other server). See docs/keyspace.md.
    request_defaults: Literal["auto", "openai", "none"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _passthrough_is_route(cls, data: Any) -> Any:
        """`passthrough` (the older name) is `route`: true -> direct, false -> auto. Accepted,
        with a warning naming the replacement; both at once is an error."""
        if isinstance(data, dict) and "passthrough" in data:
            data = dict(data)
            passthrough = data.pop("passthrough")
            if "route" in data:
                raise ValueError("passthrough is replaced by route; set only route")
            if not isinstance(passthrough, bool):
                raise ValueError("passthrough must be true or false (better: route: direct | auto)")
            data["route"] = "direct" if passthrough else "auto"
            _log.warning(
                "model %r: `passthrough: %s` is deprecated; use `route: %s`",
                data.get("name"),
                str(passthrough).lower(),
                data["route"],
            )
        return data

    @model_validator(mode="after")
    def _direct_is_openai(self) -> ModelConfig:
        if self.route == "direct" and not self.speaks_openai:
            raise ValueError(
                "route: direct needs an OpenAI-compatible litellm_model "
                f"({' or '.join(p + '<model>' for p in OPENAI_COMPATIBLE)})"
            )
        return self

    @property
    def speaks_openai(self) -> bool:
        """The provider speaks the OpenAI API itself: no translation is needed."""
        return self.litellm_model.startswith(OPENAI_COMPATIBLE)

    @property
    def via_litellm(self) -> bool:
        """Misses go through litellm (it translates); otherwise directly, or the demo."""
        if self.is_demo:
            return False
        return self.route == "litellm" or (self.route == "auto" and not self.speaks_openai)

    @property
    def is_demo(self) -> bool:
        """`demo/...` models are answered by the proxy itself (offline try-out)."""
        return self.litellm_model.startswith("demo/")


class BucketLimits(_Strict):
    requests_per_minute: int | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(None, gt=0)
    burst_requests: int | None = Field(None, gt=0)
    burst_tokens: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> BucketLimits:
        if self.burst_requests is not None and self.requests_per_minute is None:
            raise ValueError("burst_requests needs requests_per_minute")
        if self.burst_tokens is not None and self.tokens_per_minute is None:
            raise ValueError("burst_tokens needs tokens_per_minute")
        return self


class UserBudget(_Strict):
    """USD an end user of a tenant may spend per UTC day and calendar month."""

    usd_per_day: float | None = Field(None, gt=0, le=10_000_000)
    usd_per_month: float | None = Field(None, gt=0, le=10_000_000)


class TenantBudget(UserBudget):
    """A tenant's spend budgets (proxy.core.budgets): reserved before a miss goes upstream,
    settled with the answer's real usage."""

    per_user: UserBudget | None = None
    alert_at: float | None = Field(None, gt=0, le=1)  # fraction: one WARNING + event per window


class TenantLimits(BucketLimits):
    models: dict[str, BucketLimits] = Field(default_factory=dict)
    per_user: BucketLimits | None = None


class TenantConfig(_Strict):
    name: str = Field(pattern=_NAME)
    api_keys: tuple[str, ...] = Field(min_length=1)
    cache_ttl_seconds: int | None = Field(None, ge=1)
    limits: TenantLimits | None = None
    budget: TenantBudget | None = None
    limit_cache_hits: bool = False
    # Record and replay (README "Use it in CI"): `record` caches as `normal` but keeps every
    # request beside its answer and writes entries with `record_ttl_seconds`; `replay` never
    # calls the provider: a miss is a 404 (`no_recorded_answer`) naming the nearest recorded
    # request, and rate limits do not apply.
    cache_mode: Literal["normal", "record", "replay"] = "normal"
    # The one long-lived entry kind (still with a TTL): not capped by cache.max_ttl_seconds.
    record_ttl_seconds: int = Field(30 * 24 * 3600, ge=1, le=366 * 24 * 3600)

    @field_validator("api_keys")
    @classmethod
    def _keys_usable(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            if key.startswith(_SHA256_PREFIX):
                if not re.fullmatch(r"[0-9a-f]{64}", key[len(_SHA256_PREFIX) :]):
                    raise ValueError("sha256: keys need 64 lowercase hex digits")
            elif len(key) < 8:
                raise ValueError("an API key must be at least 8 characters")
        return keys

    @cached_property
    def key_digests(self) -> tuple[bytes, ...]:
        """sha256 of each key: what requests are matched against (plaintext is not kept)."""
        return tuple(key_digest(k) for k in self.api_keys)


class RateLimitConfig(_Strict):
    on_redis_error: Literal["open", "closed"] = "open"
    on_limit: Literal["reject", "wait"] = "reject"
    max_wait_ms: int = Field(2000, ge=0, le=60_000)
    # Completion tokens reserved when a request sets no max_tokens.
    default_max_tokens: int = Field(1024, ge=1)


class StatsConfig(_Strict):
    # Counters are summed in each process and written to Redis in one pipeline this often,
    # so recording a request costs no Redis round trip.
    flush_interval_ms: int = Field(1000, ge=10, le=60_000)
    events_max: int = Field(10_000, ge=0)  # event stream cap (XADD MAXLEN ~); 0 = no events
    events_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    # At most this many events are written per flush: every miss, limit and error first,
    # then the newest hits. Writing every hit at thousands per second would cost the hit
    # path more than the log is worth; skipped hits are counted (events_skipped).
    events_per_flush: int = Field(200, ge=1)


class SingleFlightConfig(_Strict):
    enabled: bool = True
    # The leader's lock lives this long unless refreshed (it is, every lock_ms/3, while the
    # leader works): a crashed leader's followers stop waiting within about this long.
    lock_ms: int = Field(10_000, ge=100)
    # A follower waits at most this long, then makes its own upstream call.
    wait_ms: int = Field(60_000, ge=0)


class ReviewConfig(_Strict):
    """The review queue (`proxy.store.review`): flagged and sampled answers wait for a decision."""

    # quarantine: a flagged answer stops being served at once (the next request refreshes it)
    # and is kept for review; keep: it is served until someone decides.
    on_flag: Literal["quarantine", "keep"] = "quarantine"
    # This fraction of newly stored answers is queued for routine review, chosen by the key's
    # digest so every replica picks the same ones.
    sample_rate: float = Field(0.0, ge=0.0, le=1.0)
    max_items: int = Field(10_000, ge=1)  # per tenant; the oldest are dropped (and counted)
    retention_seconds: int = Field(7 * 24 * 3600, ge=60)
    pin_max_seconds: int = Field(30 * 24 * 3600, ge=60)
    # Keep each cached answer's request beside it (same TTL) so reviewers can see the
    # prompt; costs memory roughly the size of the prompts. Hits never read it.
    keep_prompts: bool = True


class TracingConfig(_Strict):
    """OpenTelemetry traces (`proxy.service.tracing`): off by default. The exporter is set by
    the standard OTEL_* environment variables (OTLP over HTTP unless they say otherwise)."""

    enabled: bool = False

    @field_validator("enabled")
    @classmethod
    def _installed(cls, enabled: bool) -> bool:
        # Found, not imported: the packages are an optional extra, imported only when serving.
        if enabled and not _importable("opentelemetry.sdk.trace"):
            raise ValueError(
                "OpenTelemetry is not installed: pip install 'llm-cache-proxy[tracing]' (or set it to false)"
            )
        return enabled


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, AttributeError, ValueError):  # a parent package missing, or blocked
        return False


class AdminConfig(_Strict):
    api_keys: tuple[str, ...] = ()

    @cached_property
    def key_digests(self) -> tuple[bytes, ...]:
        return tuple(key_digest(k) for k in self.api_keys)


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    redis: RedisConfig = RedisConfig()
    cache: CacheConfig = CacheConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    review: ReviewConfig = ReviewConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    admin: AdminConfig = AdminConfig()
    stats: StatsConfig = StatsConfig()
    single_flight: SingleFlightConfig = SingleFlightConfig()
    tracing: TracingConfig = TracingConfig()
    models: tuple[ModelConfig, ...] = Field(min_length=1)
    tenants: tuple[TenantConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        _unique("models", [m.name for m in self.models], "model name")
        _unique("tenants", [t.name for t in self.tenants], "tenant name")
        owner: dict[bytes, str] = {}
        for t in self.tenants:
            for digest in t.key_digests:
                if digest in owner:
                    raise ValueError(
                        f"tenants: tenant {t.name!r} reuses an API key of tenant {owner[digest]!r}"
                    )
                owner[digest] = t.name
        for digest in self.admin.key_digests:
            if digest in owner:
                raise ValueError(f"admin.api_keys: a key is also tenant {owner[digest]!r}'s")
        for t in self.tenants:
            for model in t.limits.models if t.limits else {}:
                if model not in self.model_index:
                    raise ValueError(f"tenants: tenant {t.name!r} limits unknown model {model!r}")
        return self

    @cached_property
    def model_index(self) -> dict[str, ModelConfig]:
        return {m.name: m for m in self.models}

    @cached_property
    def tenant_index(self) -> dict[str, TenantConfig]:
        return {t.name: t for t in self.tenants}

    @cached_property
    def tenant_by_key(self) -> dict[bytes, TenantConfig]:
        """sha256(key) -> tenant; the lookup `proxy.http.auth` does per request."""
        return {d: t for t in self.tenants for d in t.key_digests}


def key_digest(key: str) -> bytes:
    """A configured key as the 32-byte sha256 digest requests are compared against."""
    if key.startswith(_SHA256_PREFIX):
        return bytes.fromhex(key[len(_SHA256_PREFIX) :])
    return hashlib.sha256(key.encode()).digest()


def _unique(field: str, names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{field}: duplicate {what} {name!r}")
        seen.add(name)


def load_config(path: str | Path, environ: Mapping[str, str]) -> Config:
    """Read, expand and validate a config file; raises ConfigError with one clear line."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return parse_config(raw, environ, source=str(path))


def parse_config(raw: dict[str, Any], environ: Mapping[str, str], source: str = "config") -> Config:
    """Validate an already-loaded mapping (used by load_config and by tests)."""
    try:
        expanded = _expand(raw, environ, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return Config.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}") from None


def _expand(node: Any, environ: Mapping[str, str], where: str) -> Any:
    if isinstance(node, str):
        return _expand_string(node, environ, where)
    if isinstance(node, dict):
        return {k: _expand(v, environ, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, environ, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


def _expand_string(value: str, environ: Mapping[str, str], where: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set")

    return _ENV_REF.sub(substitute, value)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ""
    for part in err["loc"]:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    if not where:
        return message
    if message.startswith(f"{where.split('.')[0]}:"):
        return message
    return f"{where}: {message}"
