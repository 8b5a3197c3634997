"""OpenTelemetry traces of proxied requests: off unless `tracing.enabled: true`.

One server span per request on a cached endpoint (continuing the client's W3C
`traceparent`), with child spans for the cache lookup, the rate limiter, the single-flight
wait and the provider call. Attributes follow the OpenTelemetry GenAI semantic conventions
(`gen_ai.*`) plus the proxy's own (`llmcp.*`: tenant, cache status, key digest). Never
the prompt, unless `server.log_prompts` (then the request body as the access log shows it).

Why it is built like this:
- Off costs nothing: the pipeline's hooks are `with span(req.trace, ...)`, and `req.trace`
  is None, so a hook is one attribute check and a shared no-op context manager; no span
  object is made and OpenTelemetry is never imported (it is an optional extra).
- On, the exporter is the standard one, configured by the standard environment variables
  (`OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
  `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`): OTLP over HTTP/protobuf unless
  `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` says `grpc`. Tests pass an exporter instead.
- The provider instance is the proxy's own (not the global one), so several apps in one
  process (tests) each export to their own exporter.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from proxy import __version__
from proxy.config import Config, ModelConfig
from proxy.errors import ConfigError, ProxyError, RateLimited
from proxy.stats.schema import NO_MODEL, RequestRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from proxy.core.apis.base import Usage

log = logging.getLogger("llmcp.tracing")

_OFF = contextlib.nullcontext()
_INSTALL = "pip install 'llm-cache-proxy[tracing]'"
_INSTALL_GRPC = "pip install opentelemetry-exporter-otlp-proto-grpc"
# GenAI semantic conventions: the operation each cached endpoint is.
OPERATIONS: dict[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/responses": "chat",
    "/v1/embeddings": "embeddings",
}
# litellm provider prefixes whose well-known `gen_ai.provider.name` is spelt differently.
_PROVIDERS = {
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "bedrock": "aws.bedrock",
    "vertex_ai": "gcp.vertex_ai",
    "gemini": "gcp.gemini",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "watsonx": "ibm.watsonx.ai",
    "text-completion-openai": "openai",
}


_REQUEST_PARAMS = (
    ("gen_ai.request.max_tokens", "max_tokens"),
    ("gen_ai.request.temperature", "temperature"),
    ("gen_ai.request.top_p", "top_p"),
)


def provider_name(model: ModelConfig) -> str:
    """`gen_ai.provider.name` of a configured model, from its litellm prefix."""
    prefix = model.litellm_model.partition("/")[0]
    return _PROVIDERS.get(prefix, prefix)


def span(trace: RequestTrace | None, name: str) -> contextlib.AbstractContextManager[Any]:
    """A child span of the request's span around a stage, or nothing when tracing is off."""
    return _OFF if trace is None else trace.child(name)


# The provider call's hooks: one line each in the pipeline, nothing but a check when off.
def call_started(
    trace: RequestTrace | None, model: ModelConfig, body: Mapping[str, Any], stream: bool
) -> None:
    if trace is not None:
        trace.provider_call(model, body, stream)


def call_responded(trace: RequestTrace | None, answer: Mapping[str, Any]) -> None:
    """The answer (or a stream's first chunk) arrived: its model and id."""
    if trace is not None:
        trace.provider_responded(answer)


def call_ended(trace: RequestTrace | None, usage: Usage | None) -> None:
    if trace is not None:
        trace.provider_ended(usage)


def call_failed(trace: RequestTrace | None, exc: BaseException) -> None:
    if trace is not None:
        trace.provider_failed(exc)


class Tracing:
    """The process's tracer, built once when `tracing.enabled`."""

    def __init__(self, provider: TracerProvider, log_prompts: bool) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._tracer = provider.get_tracer("llm-cache-proxy", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self.log_prompts = log_prompts

    @classmethod
    def build(
        cls, config: Config, environ: Mapping[str, str], exporter: SpanExporter | None = None
    ) -> Tracing | None:
        """None when tracing is off. `exporter` replaces the OTLP one (tests): its spans are
        exported as each ends, where the OTLP exporter's go in batches."""
        if not config.tracing.enabled:
            return None
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        except ImportError as exc:
            raise ConfigError(f"tracing.enabled: OpenTelemetry is not installed ({exc}); {_INSTALL}") from exc
        resource = Resource.create({"service.version": __version__})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "llm-cache-proxy"}))
        provider = TracerProvider(resource=resource)
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(environ)))
        return cls(provider, config.server.log_prompts)

    def start(self, path: str, request_id: str, carrier: Mapping[str, str]) -> RequestTrace:
        """The server span of one request, continuing the client's `traceparent` if any."""
        from opentelemetry.trace import SpanKind

        parent = self._propagator.extract(carrier)
        attributes = {
            "http.request.method": "POST",
            "http.route": path,
            "url.path": path,
            "gen_ai.operation.name": OPERATIONS.get(path, "chat"),
            "llmcp.request_id": request_id,
        }
        server = self._tracer.start_span(f"POST {path}", parent, SpanKind.SERVER, attributes)
        return RequestTrace(self._tracer, server, attributes["gen_ai.operation.name"], self.log_prompts)

    def shutdown(self) -> None:
        """Export what is left (the batch processor's queue) and stop."""
        self._provider.shutdown()


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"
    try:
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )

            return GrpcSpanExporter()
    except ImportError as exc:
        raise ConfigError(
            f"tracing.enabled: the OTLP exporter for {protocol} is not installed ({exc}); "
            + (_INSTALL if protocol == "http/protobuf" else _INSTALL_GRPC)
        ) from None
    raise ConfigError(
        f"tracing.enabled: OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported (http/protobuf or grpc)"
    )


class RequestTrace:
    """The spans of one request: the server span and the provider call that may outlive a
    stage (a stream is relayed after the pipeline returned)."""

    __slots__ = ("_context", "_log_prompts", "_operation", "_provider_call", "_tracer", "server")

    def __init__(self, tracer: Tracer, server: Span, operation: str, log_prompts: bool) -> None:
        from opentelemetry.trace import set_span_in_context

        self._tracer = tracer
        self.server = server
        self._context = set_span_in_context(server)
        self._operation = operation
        self._log_prompts = log_prompts
        self._provider_call: Span | None = None

    @contextlib.contextmanager
    def child(self, name: str) -> Iterator[Span]:
        """A child span around one stage; an error leaving it marks it failed (by class)."""
        child = self._tracer.start_span(name, self._context)
        try:
            yield child
        except BaseException as exc:
            _failed(child, exc)
            raise
        finally:
            child.end()

    def provider_call(self, model: ModelConfig, body: Mapping[str, Any], streaming: bool) -> None:
        """Open the provider call's span: a client span named as GenAI's (`chat gpt-4o-mini`),
        its request model the provider's name for it (the server span has the client's)."""
        from opentelemetry.trace import SpanKind

        upstream = model.litellm_model.partition("/")[2] or model.litellm_model
        provider = provider_name(model)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": self._operation,
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
            "gen_ai.request.model": upstream,
            "llmcp.stream": streaming,
        }
        for name, field in _REQUEST_PARAMS:
            value = body.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[name] = value
        self._provider_call = self._tracer.start_span(
            f"{self._operation} {upstream}", self._context, SpanKind.CLIENT, attributes
        )

    def provider_responded(self, answer: Mapping[str, Any]) -> None:
        if self._provider_call is not None:
            _response_attributes(self._provider_call, answer)
            _response_attributes(self.server, answer)

    def provider_ended(self, usage: Usage | None) -> None:
        """The call is over (a stream at its end): its tokens, and the span ends."""
        call, self._provider_call = self._provider_call, None
        if call is None:
            return
        if usage is not None:
            call.set_attribute("gen_ai.usage.input_tokens", usage[0])
            call.set_attribute("gen_ai.usage.output_tokens", usage[1])
        call.end()

    def provider_failed(self, exc: BaseException) -> None:
        call, self._provider_call = self._provider_call, None
        if call is not None:
            _failed(call, exc)
            call.end()

    def finish(
        self,
        record: RequestRecord,
        status: int,
        cache_status: str | None = None,
        digest: str = "",
        model: ModelConfig | None = None,
    ) -> None:
        """Close the request's span with what the request did: the stats record, the HTTP
        status, and (once the pipeline ran) `X-Cache`, the key digest and the model."""
        server = self.server
        if self._provider_call is not None:  # a stream cut short before its end was seen
            self._provider_call.end()
            self._provider_call = None
        done: dict[str, Any] = {"http.response.status_code": status, "llmcp.tenant": record.tenant}
        if record.model != NO_MODEL:
            done["gen_ai.request.model"] = record.model
        if record.cache is not None:
            done["llmcp.cache.outcome"] = record.cache.lower()
        if cache_status is not None:
            done["llmcp.cache.status"] = cache_status  # what X-Cache said
        if digest:
            done["llmcp.cache.key"] = digest
        if model is not None:
            done["gen_ai.provider.name"] = done["gen_ai.system"] = provider_name(model)
        if record.prompt_tokens or record.completion_tokens:
            done["gen_ai.usage.input_tokens"] = record.prompt_tokens
            done["gen_ai.usage.output_tokens"] = record.completion_tokens
        error = record.error or (f"rate_limited_{record.limited}" if record.limited else None)
        if error is not None:
            done["error.type"] = error
        if self._log_prompts and record.prompt is not None:
            done["llmcp.request.body"] = record.prompt
        server.set_attributes(done)  # one call: the SDK takes a lock per call
        if status >= 500:
            from opentelemetry.trace import Status, StatusCode

            server.set_status(Status(StatusCode.ERROR))
        server.end()


def _response_attributes(target: Span, answer: Mapping[str, Any]) -> None:
    model, ident = answer.get("model"), answer.get("id")
    if isinstance(model, str):
        target.set_attribute("gen_ai.response.model", model)
    if isinstance(ident, str):
        target.set_attribute("gen_ai.response.id", ident)


def _failed(target: Span, exc: BaseException) -> None:
    """Mark a span failed by the error's class, never its message (it may quote the prompt)."""
    from opentelemetry.trace import Status, StatusCode

    kind = "rate_limited" if isinstance(exc, RateLimited) else type(exc).__name__
    target.set_attribute("error.type", kind)
    if not isinstance(exc, ProxyError) or exc.status >= 500:
        target.set_status(Status(StatusCode.ERROR))
