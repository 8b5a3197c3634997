"""SIGTERM: stop accepting, let in-flight streams finish, exit 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import TENANT_KEYS
from tests.e2e.stack import start_stack, stop_stack

pytestmark = pytest.mark.e2e


def test_sigterm_drains_an_in_flight_stream(tmp_path: Path, redis_url: str, redis_sync: redis.Redis) -> None:
    stack = start_stack(tmp_path, redis_url, settled=True)  # the wait for a first chunk is timed
    try:
        stack.upstream_mode(latency_ms=0, chunk_delay_ms=150)  # ~17 chunks: a ~2.5 s stream
        server = stack.procs[-1]
        body = {
            "model": "fake",
            "stream": True,
            "messages": [{"role": "user", "content": "a long answer please one two three four"}],
        }
        received: list[bytes] = []
        first_chunk = threading.Event()

        def stream() -> None:
            headers = {"Authorization": f"Bearer {TENANT_KEYS['acme']}"}
            with httpx.stream(
                "POST", f"{stack.base_url}/chat/completions", json=body, headers=headers, timeout=30
            ) as response:
                for part in response.iter_bytes():
                    received.append(part)
                    first_chunk.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_chunk.wait(15)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        reader.join(timeout=30)
        text = b"".join(received)
        assert text.rstrip().endswith(b"data: [DONE]"), text[-300:]  # the stream was not cut
        assert server.wait(timeout=30) == 0
        assert time.monotonic() - started > 1.0  # it waited for the stream, not killed it
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{stack.base_url[:-3]}/healthz", timeout=2)
    finally:
        stop_stack(stack, redis_sync)
