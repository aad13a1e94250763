"""Shared pieces of the router benchmarks: a minimal keep-alive HTTP/1.1 load client (one connection
per worker, so the client measures the server rather than its own pool), a stock vLLM server, a Ray
cluster with the router deployed, and the LiteLLM proxy from its own venv."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from launchers.local import LocalCluster, free_port  # noqa: E402
from launchers.polling import PollTimeout, poll_until  # noqa: E402
from launchers.procs import read as read_proc  # noqa: E402
from serve_apps.config import EngineConfig  # noqa: E402

RESULTS = ROOT / "loadtests" / "results"
LITELLM_VENV = ROOT / "loadtests" / ".venv-litellm"


class Connection:
    """One keep-alive connection; ``post`` returns (status, headers, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        status, response_headers, data, _ = await self.post_timed(path, body, headers)
        return status, response_headers, data

    async def post_timed(self, path: str, body: bytes, headers: dict[str, str] | None = None
                         ) -> tuple[int, dict[str, str], bytes, float]:
        """Like ``post``, plus the time from sending to the first body bytes (TTFT for streams)."""
        sent = time.perf_counter()
        first = None
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n{extra}\r\n").encode()
        self.writer.write(head + body)
        try:
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionError("closed")
            status = int(status_line.split()[1])
            response_headers: dict[str, str] = {}
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b""):
                    break
                key, _, value = line.decode().partition(":")
                response_headers[key.strip().lower()] = value.strip()
            if "content-length" in response_headers:
                data = await self.reader.readexactly(int(response_headers["content-length"]))
                first = time.perf_counter()
            else:  # chunked
                parts = []
                while True:
                    size = int((await self.reader.readline()).strip(), 16)
                    if size == 0:
                        await self.reader.readline()
                        break
                    parts.append(await self.reader.readexactly(size))
                    first = first or time.perf_counter()
                    await self.reader.readline()
                data = b"".join(parts)
        except Exception:
            self.close()
            raise
        if response_headers.get("connection") == "close":
            self.close()
        return status, response_headers, data, (first or time.perf_counter()) - sent

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def progress(message: str) -> None:
    """A progress line on stderr: long start-ups must never look hung."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def split_url(url: str) -> tuple[str, int, str]:
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    return host, int(port or 80), "/" + path if path else ""


async def closed_loop(url: str, body: bytes, concurrency: int, duration: float, headers: dict[str, str] | None = None,
                      warmup: float = 1.0) -> dict[str, Any]:
    """``concurrency`` workers, each one connection, back to back for ``duration`` s (after warm-up)."""
    host, port, prefix = split_url(url)
    latencies: list[float] = []
    errors = 0
    sent = 0  # every request, warm-up included (for CPU-per-request figures taken around the call)
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def worker() -> None:
        nonlocal errors, sent
        connection = Connection(host, port)
        while (now := time.perf_counter()) < stop_at:
            ok = await _chat_ok(connection, prefix, body, headers)
            sent += 1
            done = time.perf_counter()
            if now >= measure_from:
                if ok:
                    latencies.append(done - now)
                else:
                    errors += 1
        connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {**_latency_summary(latencies, errors), "rps": len(latencies) / duration, "sent": sent}


async def _chat_ok(connection: Connection, prefix: str, body: bytes, headers: dict[str, str] | None) -> bool:
    """One chat request on ``connection``; True on a 200 (any transport failure counts as an error)."""
    try:
        status, _, _ = await connection.post(prefix + "/v1/chat/completions", body, headers)
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
        return False
    return status == 200


def chat_body(max_tokens: int, stream: bool, model: str = "tiny-chat") -> bytes:
    """The chat request every streaming benchmark sends (a stream runs to max_tokens: ignore_eos)."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "tell me a story"}],
                            "max_tokens": max_tokens, "temperature": 0}
    if stream:  # usage says how many tokens came: events do not (see ``StreamTally``)
        body.update(stream=True, ignore_eos=True, stream_options={"include_usage": True})
    return json.dumps(body).encode()


async def lean_streams(url: str, concurrency: int, tokens: int, per_worker: int = 1,
                       headers: dict[str, str] | None = None, model: str = "tiny-chat") -> dict[str, Any]:
    """``concurrency`` workers on raw sockets, each running ``per_worker`` streams of ``tokens`` tokens in
    turn: generated tokens/s, errors, TTFT median and CDF (see ``StreamTally``)."""
    host, port, prefix = split_url(url)
    body = chat_body(tokens, stream=True, model=model)
    tally = StreamTally()

    async def worker() -> None:
        connection = Connection(host, port)
        try:
            for _ in range(per_worker):
                try:
                    status, _, data, ttft = await connection.post_timed(prefix + "/v1/chat/completions", body, headers)
                except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                    tally.errors += 1
                    continue
                tally.add(status, data, ttft)
        finally:
            connection.close()

    return await timed_streams(worker, concurrency, tally)


_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')


class StreamTally:
    """What a run of chat streams delivered. Tokens come from each stream's usage chunk, not from
    counting content events: under load vLLM's server merges the tokens it has not sent yet into one
    event (up to a quarter fewer events than tokens at 64 streams here), so events per second
    understate the busier server. A stream counts only if it answered 200, ended with ``[DONE]`` and
    reported its usage."""

    def __init__(self) -> None:
        self.tokens = self.events = self.errors = 0
        self.ttfts: list[float] = []

    def add(self, status: int, data: bytes, ttft: float) -> None:
        found = _COMPLETION_TOKENS.findall(data)
        if status != 200 or not data.rstrip().endswith(b"data: [DONE]") or not found:
            self.errors += 1
            return
        self.tokens += int(found[-1])
        self.events += content_events(data)
        self.ttfts.append(ttft)


async def timed_streams(worker, concurrency: int, tally: StreamTally) -> dict[str, Any]:
    """Run ``concurrency`` copies of ``worker`` (each adding its streams to ``tally``) and summarise."""
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ttfts = tally.ttfts
    return {"tokens_per_s": tally.tokens / elapsed, "tokens": tally.tokens, "events": tally.events,
            "errors": tally.errors, "elapsed_s": elapsed,
            "ttft_median_ms": statistics.median(ttfts) * 1000 if ttfts else None, "ttft_cdf_ms": cdf_sample(ttfts)}


def content_events(data: bytes) -> int:
    """SSE events of a chat stream that carry content (one or more tokens each)."""
    return sum(1 for line in data.split(b"\n")
               if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line)


def cdf_sample(latencies: list[float], points: int = 200) -> list[float]:
    """``points`` evenly spaced order statistics of ``latencies`` (s) in ms: the distribution's shape for a
    CDF plot without storing every request."""
    ordered = sorted(latencies)
    if len(ordered) <= points:
        return [round(x * 1000, 3) for x in ordered]
    return [round(ordered[round(i * (len(ordered) - 1) / (points - 1))] * 1000, 3) for i in range(points)]


def _latency_summary(latencies: list[float], errors: int) -> dict[str, Any]:
    return {"requests": len(latencies), "errors": errors,
            "median_ms": statistics.median(latencies) * 1000 if latencies else None,
            "p99_ms": sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000 if latencies else None,
            "cdf_ms": cdf_sample(latencies)}


async def interleaved(targets: dict[str, tuple[str, dict[str, str] | None]], body: bytes, duration: float,
                      warmup: float = 1.0) -> dict[str, dict[str, Any]]:
    """Concurrency 1, request by request in turn over every target (order rotated each cycle), one
    keep-alive connection each: every target sees the same machine at the same moments, so the
    difference of medians is the added latency, not the drift of a shared 2-core box between runs."""
    connections = {name: (Connection(*split_url(url)[:2]), split_url(url)[2], headers)
                   for name, (url, headers) in targets.items()}
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    errors = dict.fromkeys(targets, 0)
    names = list(targets)
    start = time.perf_counter()
    cycle = 0
    while (now := time.perf_counter()) < start + warmup + duration:
        order = names[cycle % len(names):] + names[:cycle % len(names)]
        cycle += 1
        for name in order:
            connection, prefix, headers = connections[name]
            sent = time.perf_counter()
            ok = await _chat_ok(connection, prefix, body, headers)
            if now >= start + warmup:
                if ok:
                    latencies[name].append(time.perf_counter() - sent)
                else:
                    errors[name] += 1
    for connection, _, _ in connections.values():
        connection.close()
    return {name: _latency_summary(values, errors[name]) for name, values in latencies.items()}


def process_cpu_seconds(pid: int | str) -> float | None:
    """CPU time (user + system, seconds) one process has used so far; None once it is gone (/proc)."""
    proc = read_proc(pid)
    return None if proc is None else proc.cpu_s


def cpu_seconds(match: str) -> float:
    """CPU time (user + system, seconds) of every live process whose command line contains ``match``:
    read around a run, it says how much CPU one request cost each process (Linux /proc)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if match not in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                continue
        except OSError:
            continue
        total += process_cpu_seconds(entry.name) or 0.0
    return total


def bench_body(max_tokens: int = 1) -> bytes:
    return json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "hello there"}],
                       "max_tokens": max_tokens, "temperature": 0}).encode()


def wait_http(url: str, timeout: float, expect: int = 200, headers: dict[str, str] | None = None) -> None:
    def answers() -> bool:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=3) as response:
                return response.status == expect
        except Exception:
            return False

    try:
        poll_until(answers, timeout, 0.5)
    except PollTimeout:
        raise TimeoutError(f"{url} not ready in {timeout:.0f}s") from None


@dataclass
class Proc:
    process: subprocess.Popen
    url: str

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)


def spawn(cmd: list[str], env: dict[str, str], log: Path, port: int, ready_path: str, timeout: float) -> Proc:
    """Start a server in its own process group (in the caller's session, like ``LocalCluster``: every
    process under test in one autogroup, so the kernel schedules them alike) and wait until
    ``ready_path`` answers 200."""
    process = subprocess.Popen(cmd, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=open(log, "ab"),
                               stderr=subprocess.STDOUT, process_group=0)
    proc = Proc(process, f"http://127.0.0.1:{port}")
    try:
        wait_http(proc.url + ready_path, timeout)
    except TimeoutError:
        proc.kill()
        raise
    return proc


def start_vllm(log: Path, port: int | None = None, kv_cache_gb: int = 1, timeout: float = 300,
               engine: EngineConfig | None = None) -> Proc:
    """vLLM's stock OpenAI server on ``engine``'s model, served name and dtype (default: the tiny model,
    the baseline every benchmark compares against)."""
    engine = engine or EngineConfig(name="tiny-chat", model="builtin:tiny-chat")
    port = port or free_port()
    progress(f"starting a stock vLLM server on 127.0.0.1:{port} (~80 s; log {log})")
    dtype = engine.engine_dtype()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", engine.resolve_model_path(),
           "--served-model-name", engine.name, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           *(["--dtype", dtype] if dtype != "auto" else [])]
    return spawn(cmd, {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb)}, log, port, "/health", timeout)


def start_router(backends: list[dict[str, Any]], workdir: Path, env: dict[str, str] | None = None,
                 haproxy: bool = True, listen_port: int | None = None) -> tuple[LocalCluster, str]:
    """A fresh Ray cluster on loopback with the router at /: Serve's fast path (THROUGHPUT_OPTIMIZED,
    set by LocalCluster) plus, by default, the HAProxy ingress. With ``listen_port`` the router also
    serves its own data-plane listener on that port (``router.listen``)."""
    extra = {"PYTHONPATH": str(ROOT), **(env or {})}
    progress(f"starting a Ray cluster and the router ({len(backends)} backends; ~30-60 s; log {workdir / 'ray.log'})")
    cluster = LocalCluster(haproxy=haproxy, extra_env=extra, log_path=workdir / "ray.log")
    cluster.start()
    port = free_port()
    config = {"http_options": {"host": "127.0.0.1", "port": port}, "applications": [
        {"name": "router", "route_prefix": "/", "import_path": "serve_apps.router.app:build_router_app",
         "args": {"backends": backends,
                  **({"router": {"listen": {"port": listen_port}}} if listen_port else {})}}]}
    path = workdir / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        cluster.deploy(path)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", 120)
        if listen_port:
            wait_http(f"http://127.0.0.1:{listen_port}/health", 30)
    except Exception:
        cluster.stop()
        raise
    return cluster, url


def start_litellm(backend_urls: list[str], workdir: Path, provider: str = "hosted_vllm") -> Proc:
    """LiteLLM proxy (its own venv: loadtests/setup_litellm_venv.sh) with the same backends and a
    fallback from the first to the second."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        raise SystemExit("LiteLLM venv missing: run loadtests/setup_litellm_venv.sh first")
    names = ["tiny-chat"] + [f"tiny-chat-fallback-{i}" for i in range(1, len(backend_urls))]
    config = {
        "model_list": [{"model_name": name, "litellm_params": {"model": f"{provider}/tiny-chat", "api_base": url + "/v1",
                                                                 "api_key": "none"}}
                       for name, url in zip(names, backend_urls, strict=False)],
        "router_settings": {"fallbacks": [{"tiny-chat": names[1:]}]} if len(names) > 1 else {},
        "general_settings": {"master_key": "sk-bench-master"},
        "litellm_settings": {"drop_params": True},
    }
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    progress(f"starting the LiteLLM proxy on 127.0.0.1:{port} (~20 s)")
    cmd = [str(binary), "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    return spawn(cmd, env, workdir / "litellm.log", port, "/health/liveliness", 180)


def worker_endpoints(env: dict[str, str], app: str, deployment: str, attempts: int = 20) -> dict[str, str]:
    """``{url: token}`` of the engine workers' own ports, asked through the deployment handle (as the
    router does; Serve spreads the calls over replicas) from a separate driver process, so this process
    never joins the cluster. ``env`` is the cluster's (``LocalCluster.env()``)."""
    # inside an event loop: with RAY_SERVE_THROUGHPUT_OPTIMIZED (the cluster's env) handles need one
    code = ("import asyncio, json, ray; from ray import serve; ray.init(address='auto', logging_level='ERROR')\n"
            "async def main():\n"
            f"    h = serve.get_deployment_handle({deployment!r}, app_name={app!r})\n"
            f"    answers = await asyncio.gather(*(h.endpoint.remote() for _ in range({attempts})))\n"
            "    print(json.dumps({a['url']: a['token'] for a in answers if a}))\n"
            "asyncio.run(main())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"no replica of {app}/{deployment} answered: {out.stderr[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_token(cluster: LocalCluster, app: str, deployment: str, url: str, attempts: int = 20) -> str:
    """The token the engine worker at ``url`` requires (see ``worker_endpoints``)."""
    token = worker_endpoints(cluster.env(), app, deployment, attempts).get(url)
    if token is None:
        raise RuntimeError(f"no replica of {app}/{deployment} answered for {url}")
    return token


def vllm_counters(url: str, token: str, names: tuple[str, ...] = (
        "vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:request_success")) -> dict[str, float]:
    """Counters of the vLLM engine behind an engine worker's port (its ``/metrics``), summed over labels."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(url + "/metrics", headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    totals = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name in totals:
            totals[family.name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return totals


def run_contained(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run`` (output captured as text) in a session of its own that is killed whole once
    the command exits or times out, however the run ends: a vLLM engine's core and worker processes
    outlive a killed parent, and one left spinning would slow down every round after it. Output goes
    through files, not pipes, so a process left behind holding them cannot hold up the run."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True, start_new_session=True)
        try:
            process.wait(timeout=timeout)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # the whole session has already ended
                pass
            process.wait()
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(cmd, process.returncode, stdout.read(), stderr.read())


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop the clusters and servers we started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def write_output(output: Any, path: Path) -> None:
    """A standalone run's ``BenchOutput``: its headlines printed, the whole of it written to ``path``."""
    for h in output.headlines:
        print(f"{h.metric}: {h.value} {h.unit}" + (f" (target {h.target}: {'met' if h.ok else 'NOT met'})" if h.target else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(output.model_dump_json(indent=1))
    print(f"wrote {path}")


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
