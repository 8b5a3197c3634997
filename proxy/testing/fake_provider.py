"""A fake OpenAI-compatible provider over real HTTP, for end-to-end tests and benchmarks.

    python -m proxy.testing.fake_provider --port 9100 [--latency-ms 200] [--chunk-delay-ms 5]

It answers `POST /v1/chat/completions`, `/v1/completions` and `/v1/responses` (stream or
not) and `/v1/embeddings` with `proxy.upstream.demo`'s deterministic answers, counts the calls it
gets, and misbehaves on command so fault handling can be driven for real:

    GET  /v1/models     {"object": "list", "data": [{"id": "fake-model", ...}]} (what `doctor`
                        asks; 401 unless `Authorization: Bearer <api_key>` once a mode sets one)
    GET  /_fake/stats   {"requests": n, "last_body": {...}}
    POST /_fake/reset   zero the counter
    POST /_fake/mode    {"mode": "ok" | "error" | "hang" | "garbage" | "reset" | "half_stream",
                         "status": 500, "latency_ms": 0, "chunk_delay_ms": 0, "api_key": null,
                         "usage": null | {"prompt_tokens": p, "completion_tokens": c,
                                          "cached_tokens": k}}

`usage` makes every chat and completions answer report those counts (the cached ones as
`prompt_tokens_details.cached_tokens`, the way OpenAI reports its prompt cache), so budget
settlement and provider-cache stats can be driven to the token.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.core.apis.base import Endpoint
from proxy.core.apis.sse import DONE, event, typed_event
from proxy.upstream import demo

Scope = dict[str, Any]


@dataclass
class FakeState:
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    mode: str = "ok"
    status: int = 500
    usage: dict[str, int] | None = None
    requests: int = 0
    last_body: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = None  # GET /v1/models wants it when set


async def _read(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _send_json(send: Any, obj: object, status: int = 200) -> None:
    data = orjson.dumps(obj)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


class FakeUpstream:
    """The ASGI app; `state` is shared with whoever drives it in-process."""

    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method = scope["path"], scope["method"]
        body = await _read(receive)
        if path == "/_fake/stats":
            await _send_json(send, {"requests": self.state.requests, "last_body": self.state.last_body})
        elif path == "/_fake/reset" and method == "POST":
            self.state.requests = 0
            await _send_json(send, {"ok": True})
        elif path == "/_fake/mode" and method == "POST":
            for name, value in orjson.loads(body or b"{}").items():
                setattr(self.state, name, value)
            await _send_json(send, {"ok": True})
        elif path.endswith("/models") and method == "GET":
            await self._models(scope, send)
        elif (endpoint := _endpoint(path)) is not None and method == "POST":
            await self._generate(endpoint, orjson.loads(body), send)
        elif path.endswith("/embeddings") and method == "POST":
            request = orjson.loads(body)
            self.state.requests += 1
            self.state.last_body = request
            inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
            if inputs and isinstance(inputs[0], int):
                inputs = [inputs]
            await _send_json(
                send, demo.embeddings(request.get("model", "fake"), inputs, request.get("dimensions"))
            )
        else:
            await _send_json(send, {"error": {"message": "not found", "type": "invalid_request_error"}}, 404)

    async def _models(self, scope: Scope, send: Any) -> None:
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if self.state.api_key is not None and given != f"Bearer {self.state.api_key}":
            error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
            await _send_json(send, {"error": error}, 401)
            return
        model = {"id": "fake-model", "object": "model", "created": 1, "owned_by": "fake"}
        await _send_json(send, {"object": "list", "data": [model]})

    async def _generate(self, endpoint: Endpoint, request: dict[str, Any], send: Any) -> None:
        state = self.state
        state.requests += 1
        state.last_body = request
        if state.latency_ms:
            await asyncio.sleep(state.latency_ms / 1000)
        if state.mode == "hang":
            await asyncio.sleep(3600)
        if state.mode == "error":
            await _send_json(
                send, {"error": {"message": "fake upstream failure", "type": "server_error"}}, state.status
            )
            return
        if state.mode == "reset":
            # Headers promise a body that never comes: the connection is cut mid-response.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"id": "cut', "more_body": True})
            raise ConnectionResetError("fake upstream: connection reset on command")
        if state.mode == "garbage":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": b"{not json"})
            return
        model = request.get("model", "fake")
        if not request.get("stream"):
            answer = demo.answer_for(endpoint, model, request)
            if state.usage is not None and "usage" in answer and endpoint is not Endpoint.RESPONSES:
                answer["usage"] = _usage(state.usage)
            await _send_json(send, answer)
            return
        chunks = demo.stream_for(endpoint, model, request)
        if state.usage is not None and endpoint is not Endpoint.RESPONSES:
            chunks = [{**c, "usage": _usage(state.usage)} if c.get("usage") else c for c in chunks]
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        if endpoint is not Endpoint.RESPONSES and not include_usage:
            chunks = [c for c in chunks if not c.get("usage")]
        if state.mode == "half_stream":
            chunks = chunks[: len(chunks) // 2]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for chunk in chunks:
            data = typed_event(chunk) if endpoint is Endpoint.RESPONSES else event(chunk)
            await send({"type": "http.response.body", "body": data, "more_body": True})
            if state.chunk_delay_ms:
                await asyncio.sleep(state.chunk_delay_ms / 1000)
        # The Responses API ends with its response.completed event; the others with [DONE].
        tail = b"" if state.mode == "half_stream" or endpoint is Endpoint.RESPONSES else DONE
        await send({"type": "http.response.body", "body": tail})


def _usage(counts: dict[str, int]) -> dict[str, Any]:
    prompt, completion = int(counts.get("prompt_tokens", 0)), int(counts.get("completion_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(counts.get("cached_tokens", 0))},
    }


def _endpoint(path: str) -> Endpoint | None:
    """The generation endpoint a path asks for (`/v1/chat/completions`, ...), if any."""
    for endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.RESPONSES):
        if path.endswith(endpoint.path):
            return endpoint
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proxy.testing.fake_provider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    import uvicorn

    app = FakeUpstream(FakeState(latency_ms=args.latency_ms, chunk_delay_ms=args.chunk_delay_ms))
    # Requests told to hang would hold a graceful shutdown forever: give them a second.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
        # Keep idle connections longer than the clients' pools do (the proxy's: 30 s), as hosted
        # providers do: uvicorn's 5 s default closed pooled connections just as litellm
        # reused them ("Connection error" in end-to-end tests under load).
        timeout_keep_alive=120,
    )


if __name__ == "__main__":
    main()
