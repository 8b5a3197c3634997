"""SIGHUP reloads the config of a running server without dropping a request."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.conftest import TENANT_KEYS
from tests.e2e.stack import Stack, start_stack, stop_stack

pytestmark = pytest.mark.e2e
NEW_KEY = "sk-initech-new-key"


class Traffic:
    """Requests in a loop while the config changes: every one must be answered 200."""

    def __init__(self, stack: Stack) -> None:
        self.url = f"{stack.base_url}/chat/completions"
        self.codes: list[int] = []
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {TENANT_KEYS['acme']}"}
        with httpx.Client(timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                body = {"model": "demo", "messages": [{"role": "user", "content": f"t{i % 20}"}]}
                try:
                    response = client.post(self.url, json=body, headers=headers)
                except httpx.RemoteProtocolError:
                    # A worker being replaced closed this idle keep-alive connection just as
                    # the request went out (HTTP/1.1's keep-alive race: the request was never
                    # read). Clients retry that on a new connection, as the openai SDK does.
                    self.reconnects += 1
                    response = client.post(self.url, json=body, headers=headers)
                self.codes.append(response.status_code)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def accepts(stack: Stack, key: str) -> bool:
    """A probe (not the traffic whose every answer is checked): a connection a replaced
    worker reset while it exits reads as "not yet"."""
    body = {"model": "demo", "messages": [{"role": "user", "content": "new tenant"}]}
    try:
        response = httpx.post(
            f"{stack.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )
    except httpx.TransportError:
        return False
    return response.status_code == 200


def restart_done(stack: Stack) -> bool:
    """Every worker runs the new config: one worker reloads in place; with several, uvicorn
    replaces them one at a time, and each old one logs its exit once its successor is ready."""
    log = (stack.work / "proxy.log").read_text()
    workers = 2 if "(2 workers" in log else 1
    return workers == 1 or log.count("Finished server process") >= workers


def edit_config(path: Path, add_tenant: bool = True, broken: bool = False) -> None:
    config = yaml.safe_load(path.read_text())
    if add_tenant:
        config["tenants"].append({"name": "initech", "api_keys": [NEW_KEY]})
    path.write_text("models: [broken" if broken else yaml.safe_dump(config))


@pytest.fixture(params=[1, 2], ids=["one-worker", "two-workers"])
def stack(
    request: Any, tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_sync: redis.Redis
) -> Iterator[Stack]:
    # The file watch is off: these tests show that SIGHUP alone reloads.
    no_watch = {"watch_config_seconds": 0}
    stack = start_stack(tmp_path_factory.mktemp("e2e-reload"), redis_url, request.param, server=no_watch)
    yield stack
    stop_stack(stack, redis_sync)


@pytest.fixture
def watched(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_sync: redis.Redis
) -> Iterator[Stack]:
    watch = {"watch_config_seconds": 0.2}
    stack = start_stack(tmp_path_factory.mktemp("e2e-watch"), redis_url, 2, server=watch)
    # /readyz answers once one worker is up: an edit before the second one has started would
    # reach it as its initial config, never as a reload.
    deadline = time.monotonic() + 30
    while (stack.work / "proxy.log").read_text().count("Application startup complete") < 2:
        assert time.monotonic() < deadline, "the second worker never started"
        time.sleep(0.1)
    yield stack
    stop_stack(stack, redis_sync)


def test_sighup_reloads_without_dropping_requests(stack: Stack) -> None:
    server = stack.procs[-1]
    path = stack.work / "config.yaml"
    assert not accepts(stack, NEW_KEY)
    with Traffic(stack) as traffic:
        time.sleep(0.5)
        edit_config(path)
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not (accepts(stack, NEW_KEY) and restart_done(stack)):
            assert time.monotonic() < deadline, "the new tenant never became valid in every worker"
            time.sleep(0.2)
        time.sleep(0.5)
    assert traffic.codes and set(traffic.codes) == {200}, traffic.codes
    assert traffic.reconnects <= 2  # at most one closed keep-alive connection per replaced worker

    # A broken file: the process stays up and the config in force does not change.
    good = path.read_text()
    edit_config(path, add_tenant=False, broken=True)
    log = stack.work / "proxy.log"
    with Traffic(stack) as traffic:
        server.send_signal(signal.SIGHUP)
        # One worker rejects it in place; with several, the replacement worker refuses to
        # start and uvicorn's supervisor keeps the old one.
        deadline = time.monotonic() + 30
        while not any(m in log.read_text() for m in ("config reload rejected", "config error, not starting")):
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(0.5)
    assert server.poll() is None
    assert set(traffic.codes) == {200}
    assert accepts(stack, NEW_KEY)
    assert "Traceback" not in log.read_text()
    path.write_text(good)


def test_an_edit_alone_reaches_every_worker(watched: Stack) -> None:
    """No signal: each of two workers sees the file change and reloads in place."""
    path = watched.work / "config.yaml"
    assert not accepts(watched, NEW_KEY)
    with Traffic(watched) as traffic:
        time.sleep(0.3)
        edit_config(path)
        deadline = time.monotonic() + 15
        while not accepts(watched, NEW_KEY):
            assert time.monotonic() < deadline, "the new tenant never became valid"
            time.sleep(0.1)
        time.sleep(0.5)
        # Fresh connections land on either worker: every one must know the new tenant.
        assert all(accepts(watched, NEW_KEY) for _ in range(20))
    assert traffic.codes and set(traffic.codes) == {200}, traffic.codes
    assert traffic.reconnects == 0  # reloaded in place: no worker was replaced
    log = (watched.work / "proxy.log").read_text()
    assert log.count("config reloaded from") == 2, log[-3000:]  # once in each worker
