"""Tracing end to end: the real server (`python -m proxy serve`, tracing.enabled) exports
OTLP over HTTP, configured only by the standard OTEL_* environment variables, to a small
receiver in this test (aiohttp; the protobuf decoded with opentelemetry-proto), while the
openai SDK is the client and sends a W3C traceparent."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.stack import Stack, start_stack, stop_stack
from tests.servers import free_port

pytestmark = pytest.mark.e2e


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf in, spans kept with their
    resource's attributes; the raw bodies too (to look for text that must not be there)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[tuple[dict[str, Any], Span]] = []
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        with self._lock:
            self.bodies.append(body)
            for resource_spans in message.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, s) for s in scope_spans.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def trace(self, trace_id: str, wanted: int) -> list[tuple[dict[str, Any], Span]]:
        """The spans of one trace, once `wanted` of them arrived (the exporter batches)."""
        for _ in range(200):
            with self._lock:
                found = [(r, s) for r, s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= wanted:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(found)} spans of trace {trace_id} arrived, wanted {wanted}")


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in pairs}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_sync: redis.Redis, receiver: Receiver
) -> Iterator[Stack]:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_SERVICE_NAME": "llmcp-e2e",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: export soon after each span ends
    }
    stack = start_stack(
        tmp_path_factory.mktemp("e2e-tracing"), redis_url, environ=environ, tracing={"enabled": True}
    )
    yield stack
    stop_stack(stack, redis_sync)


def traceparent() -> tuple[str, str, str]:
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def test_spans_reach_an_otlp_receiver_in_the_clients_trace(stack: Stack, receiver: Receiver) -> None:
    with stack.client("acme") as client:
        secret = f"the prompt {uuid.uuid4()}"
        trace_id, parent, header = traceparent()
        raw = client.chat.completions.with_raw_response.create(
            model="fake",
            messages=[{"role": "user", "content": secret}],
            extra_headers={"traceparent": header},
        )
        assert raw.headers["x-cache"] == "MISS"
        spans = receiver.trace(trace_id, 3)
        resource = spans[0][0]
        assert resource["service.name"] == "llmcp-e2e"  # OTEL_SERVICE_NAME
        by_name = {s.name: s for _, s in spans}
        server = by_name["POST /v1/chat/completions"]
        assert server.kind == Span.SpanKind.SPAN_KIND_SERVER
        assert server.parent_span_id.hex() == parent  # continues the client's span
        server_attributes = attributes(server.attributes)
        assert server_attributes["gen_ai.operation.name"] == "chat"
        assert server_attributes["gen_ai.request.model"] == "fake"
        assert server_attributes["llmcp.tenant"] == "acme"
        assert server_attributes["llmcp.cache.status"] == "MISS"
        assert server_attributes["llmcp.request_id"] == raw.headers["x-request-id"]
        usage = raw.parse().usage
        assert usage is not None
        assert server_attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
        assert server_attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
        call = by_name["chat fake-model"]
        assert call.kind == Span.SpanKind.SPAN_KIND_CLIENT
        assert call.parent_span_id == server.span_id
        call_attributes = attributes(call.attributes)
        assert call_attributes["gen_ai.provider.name"] == "openai"
        assert call_attributes["gen_ai.request.model"] == "fake-model"
        assert call_attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
        assert by_name["llmcp.cache.lookup"].parent_span_id == server.span_id

        # A streamed miss on the direct route, then a hit, each in its own trace.
        stream_id, _, stream_header = traceparent()
        chunks = client.chat.completions.create(
            model="fake-direct",
            messages=[{"role": "user", "content": f"stream {secret}"}],
            stream=True,
            extra_headers={"traceparent": stream_header},
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        streamed = {s.name: s for _, s in receiver.trace(stream_id, 3)}
        assert attributes(streamed["chat fake-model"].attributes)["llmcp.stream"] is True
        hit_id, _, hit_header = traceparent()
        again = client.chat.completions.with_raw_response.create(
            model="fake",
            messages=[{"role": "user", "content": secret}],
            extra_headers={"traceparent": hit_header},
        )
        assert again.headers["x-cache"] == "HIT"
        hit = {s.name: s for _, s in receiver.trace(hit_id, 2)}
        assert set(hit) == {"POST /v1/chat/completions", "llmcp.cache.lookup"}
        assert attributes(hit["POST /v1/chat/completions"].attributes)["llmcp.cache.status"] == "HIT"
        # Never the prompt (server.log_prompts is off), in any byte the exporter sent.
        assert not any(secret.encode() in body for body in receiver.bodies)
