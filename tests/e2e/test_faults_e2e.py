"""Fault injection with real processes: a proxy (`serve`, two workers) on a Redis this
module kills and restarts, in front of a fake provider that misbehaves on command.

Every scenario checks the same three promises: no 500 ever; every 200 carries a whole
answer (a JSON completion, or a stream that ends with [DONE]); and no key is left without
a TTL (nothing half-written, no stranded flight lock or chunk stream, no leaked limiter
reservation). Each fault's outcome is printed (pytest -s) for the release notes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
import redis

from tests.conftest import TENANT_KEYS, keys_without_ttl
from tests.e2e.stack import Stack, start_stack, stop_stack
from tests.servers import RedisProcess

pytestmark = pytest.mark.e2e
HEADERS = {"Authorization": f"Bearer {TENANT_KEYS['acme']}"}
TOKENS_PER_MINUTE = 1_000_000


@dataclass
class Outcomes:
    """What the clients saw. A stream that fails after its 200 went out ends with an error
    event: a clear error too (`stream_errors`). `incomplete` counts 200s that look like
    answers but are not whole: it must stay 0."""

    statuses: Counter[int] = field(default_factory=Counter)
    cache: Counter[str] = field(default_factory=Counter)
    answers: int = 0
    stream_errors: int = 0
    incomplete: int = 0
    samples: list[str] = field(default_factory=list)  # the incomplete ones' tails, for the report
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int, cache: str, verdict: str, raw: bytes = b"") -> None:
        with self.lock:
            self.statuses[status] += 1
            self.cache[cache] += 1
            if status == 200:
                self.answers += verdict == "whole"
                self.stream_errors += verdict == "error"
                self.incomplete += verdict == "incomplete"
                if verdict == "incomplete":
                    self.samples.append(f"{cache}: ...{raw[-400:]!r}")

    def check(self) -> None:
        assert self.statuses[500] == 0, self.statuses
        assert self.statuses[599] == 0, self.statuses
        assert self.incomplete == 0, self.samples
        assert all(s < 500 or s in (502, 503, 504) for s in self.statuses), self.statuses


def ask(stack: Stack, content: str, stream: bool, out: Outcomes, model: str = "fake") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    url = f"{stack.base_url}/chat/completions"
    try:
        with httpx.stream("POST", url, json=body, headers=HEADERS, timeout=30) as response:
            raw = response.read()
    except httpx.HTTPError:
        out.add(599, "-", "failed")  # the connection itself failed: counted, never a 200
        return 599
    verdict = "error"
    if response.status_code == 200 and stream:
        events = [e for e in raw.split(b"\n\n") if e.startswith(b"data: ")]
        if events and b'"error"' in events[-1]:
            verdict = "error"
        elif events and events[-1] == b"data: [DONE]" and b'"finish_reason":"stop"' in raw:
            verdict = "whole"
        else:
            verdict = "incomplete"
    elif response.status_code == 200:
        verdict = "whole" if orjson.loads(raw)["choices"][0]["message"]["content"] else "incomplete"
    out.add(response.status_code, response.headers.get("x-cache", "-"), verdict, raw)
    return response.status_code


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess, redis_client: redis.Redis
) -> Iterator[Stack]:
    tenants = [
        {
            "name": "acme",
            "api_keys": [TENANT_KEYS["acme"]],
            "limits": {"requests_per_minute": 100_000, "tokens_per_minute": TOKENS_PER_MINUTE},
        }
    ]
    stack = start_stack(
        tmp_path_factory.mktemp("e2e-faults"),
        redis_server.url,
        workers=2,
        settled=True,  # the hang test's client timeout must not pay for the workers' litellm import
        tenants=tenants,
        upstream={"timeout_seconds": 2},
        redis={"timeout_ms": 300, "retry_after_ms": 500},
    )
    yield stack
    stop_stack(stack, redis_client)


def tokens_left(stack: Stack) -> int:
    """The tenant's token bucket, from a fresh miss's rate-limit headers (after its own
    small reservation)."""
    body = {
        "model": "demo",
        "messages": [{"role": "user", "content": f"probe {uuid.uuid4()}"}],
        "max_tokens": 1,
    }
    response = httpx.post(f"{stack.base_url}/chat/completions", json=body, headers=HEADERS, timeout=30)
    return int(response.headers["x-ratelimit-remaining-tokens"])


def settled(stack: Stack, redis_client: redis.Redis) -> None:
    """No stranded flight lock, no key without a TTL, every reservation given back."""
    deadline = time.monotonic() + 15
    while redis_client.keys(f"{stack.prefix}:v1:*:flight:*[0-9a-f]") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not redis_client.keys(f"{stack.prefix}:v1:*:flight:*[0-9a-f]")
    assert keys_without_ttl(redis_client, stack.prefix) == []
    assert tokens_left(stack) > TOKENS_PER_MINUTE * 0.99


@pytest.mark.parametrize("fault", ["hang", "error", "garbage", "reset", "half_stream"])
@pytest.mark.parametrize("model", ["fake", "fake-direct"])
def test_upstream_faults(stack: Stack, redis_client: redis.Redis, fault: str, model: str) -> None:
    out = Outcomes()
    prompts = [f"{fault} {uuid.uuid4()}" for _ in range(3)]
    stack.upstream_mode(mode=fault, status=500)
    try:
        # Five identical requests per prompt at once: one leads, four follow the single flight.
        with ThreadPoolExecutor(30) as pool:
            # (A half stream only breaks streams; asked without stream the answer would be
            # whole and stored, and the streams would then be hits.)
            kinds = (True,) if fault == "half_stream" else (False, True)
            jobs = [(p, s) for p in prompts for s in kinds for _ in range(5)]
            list(pool.map(lambda job: ask(stack, job[0], job[1], out, model), jobs))
    finally:
        stack.upstream_mode(mode="ok")
    out.check()
    print(
        f"\n{model} upstream {fault}: statuses {dict(out.statuses)}, cache {dict(out.cache)}, "
        f"stream errors {out.stream_errors}"
    )
    if fault == "half_stream":  # every stream, leader or follower, says that it broke
        assert out.stream_errors == 15 and out.answers == 0
    else:
        assert out.answers == 0  # every request got a clear error, none a fake success
    # Nothing was cached from the failure: the same prompts now miss and get real answers.
    after = Outcomes()
    for prompt in prompts:
        ask(stack, prompt, False, after, model)
    assert after.statuses == {200: 3} and after.cache["MISS"] == 3, (after.statuses, after.cache)
    settled(stack, redis_client)


def test_client_disconnects_mid_stream(stack: Stack, redis_client: redis.Redis) -> None:
    stack.upstream_mode(chunk_delay_ms=100)
    prompt = f"hang up {uuid.uuid4()}"
    body = {"model": "fake", "messages": [{"role": "user", "content": prompt}], "stream": True}
    try:
        for _ in range(5):
            url = f"{stack.base_url}/chat/completions"
            with httpx.stream("POST", url, json=body, headers=HEADERS) as response:
                assert response.status_code == 200
                next(response.iter_raw())  # first chunk, then hang up
    finally:
        stack.upstream_mode(chunk_delay_ms=0)
    out = Outcomes()
    ask(stack, prompt, False, out)
    assert out.cache == {"MISS": 1}  # nothing half-written was cached
    settled(stack, redis_client)


def test_redis_killed_mid_load_then_restarted(
    stack: Stack, redis_server: RedisProcess, redis_client: redis.Redis
) -> None:
    out, stop = Outcomes(), threading.Event()
    prompts = [f"load {i}" for i in range(10)]

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            ask(stack, prompts[i % len(prompts)], i % 3 == 0, out)

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(traffic)
        time.sleep(1.5)
        redis_server.stop()  # SIGKILL: no goodbye
        time.sleep(2.0)
        down = Counter(out.cache)
        redis_server.start()
        time.sleep(3.0)
        stop.set()
    out.check()
    assert set(out.statuses) == {200}, out.statuses  # the limiter fails open (the default)
    print(f"\nredis killed and restarted: statuses {dict(out.statuses)}, cache {dict(out.cache)}")
    assert down["BYPASS"] > 0
    # Full service is back by itself: the prompts are stored again and then hit.
    again = Outcomes()
    for prompt in prompts * 2:
        ask(stack, prompt, False, again)
    assert again.cache["HIT"] >= len(prompts), again.cache
    assert keys_without_ttl(redis_client, stack.prefix) == []


def test_slow_redis_is_bounded_by_the_timeout(stack: Stack, redis_server: RedisProcess) -> None:
    out = Outcomes()
    blocker = redis.Redis.from_url(redis_server.url, socket_timeout=30)
    sleeper = threading.Thread(target=lambda: blocker.execute_command("DEBUG", "SLEEP", "6"))
    sleeper.start()
    time.sleep(0.2)
    started = time.monotonic()
    for i in range(5):
        ask(stack, f"slow {i}", False, out)
    elapsed = time.monotonic() - started
    sleeper.join()
    blocker.close()
    out.check()
    assert set(out.statuses) == {200}
    # Five requests while Redis sleeps 6 s: each gives up on Redis after redis.timeout_ms
    # (0.3 s) or skips it while the breaker is open, instead of waiting the sleep out.
    assert elapsed < 4.5, elapsed
    print(f"\nredis DEBUG SLEEP 6: 5 requests answered in {elapsed:.2f}s, cache {dict(out.cache)}")


def test_giant_headers_and_bodies_are_refused_and_the_server_stays_up(stack: Stack) -> None:
    url = f"{stack.base_url}/chat/completions"
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    # server.max_header_bytes (16 KiB by default) bounds all headers together: 431.
    giant = httpx.post(url, json=body, headers={**HEADERS, "x-junk": "a" * 65536}, timeout=30)
    assert 400 <= giant.status_code < 500
    huge = httpx.post(url, content=b"{" + b" " * (8 * 1024 * 1024), headers=HEADERS, timeout=30)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    many = {"model": "demo", "messages": [{"role": "user", "content": "x"}] * 5000}
    refused = httpx.post(url, json=many, headers=HEADERS, timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"
    assert httpx.post(url, json=body, headers=HEADERS, timeout=30).status_code == 200
    assert all(proc.poll() is None for proc in stack.procs)
