"""How should the router reach an in-cluster engine replica for streams (``kind: serve``): over HTTP
to the engine worker's own port (``transport: auto``) or through its DeploymentHandle
(``transport: handle``; one Ray object / gRPC message per streamed item)? And what does either cost
against the engine's own port called directly?

One Ray cluster (THROUGHPUT_OPTIMIZED + HAProxy), one router app with one engine replica of the tiny
model and two ``serve`` backends on it, one per transport; clients use the router's listener and
``X-Backend`` picks the transport. Alternating rounds of ``--concurrency`` streams x ``--tokens``
tokens (ignore_eos); tokens/s and median TTFT.

    .venv/bin/python -m loadtests.bench_router_stream [--rounds 3] [--concurrency 64] [--tokens 64]

``run`` is the same measurement for ``ray-serve-cai bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from launchers.local import LocalCluster, free_port
from launchers.polling import PollTimeout, poll_until
from loadtests.engine_workers import worker_token
from loadtests.output import progress, write_result
from loadtests.paths import ROOT
from loadtests.processes import stop_on_sigterm
from loadtests.servers import wait_http
from loadtests.streamload import lean_streams
from ray_serve_cai.bench.results import BenchOutput, BenchSettings, Row, headline


def _engine_endpoint(cluster: LocalCluster, router: str, timeout: float) -> tuple[str, dict[str, str]]:
    """The engine worker's own port, as the router learned it (``/v1/backends``), once it generates, and
    the headers that port wants (its token, asked of the replica through its handle, as the router does)."""
    def published() -> str | None:
        try:
            with urllib.request.urlopen(router + "/v1/backends", timeout=5) as response:
                data = {b["name"]: b for b in json.loads(response.read())["data"]}
            endpoints = data["http"]["endpoints"]
            if endpoints and data["http"]["healthy"]:
                wait_http(endpoints[0] + "/health", 30)
                return endpoints[0]
        except (OSError, KeyError, TimeoutError):
            pass
        return None

    try:
        url = poll_until(published, timeout, 1.0)
    except PollTimeout:
        raise TimeoutError("the engine worker never published an endpoint") from None
    return url, {"authorization": f"Bearer {worker_token(cluster, 'router', 'engine-tiny-chat', url)}"}


def measure(workdir: Path, rounds: int, concurrency: int, tokens: int, pause: float, haproxy: bool = True) -> list[dict]:
    progress("starting a Ray cluster with the router and one engine replica (~2 min)")
    cluster = LocalCluster(haproxy=haproxy, extra_env={"PYTHONPATH": str(ROOT)}, log_path=workdir / "ray.log")
    cluster.start()
    port = free_port()
    listen = free_port()
    router = f"http://127.0.0.1:{listen}"
    backends = [{"name": name, "kind": "serve", "engine": "tiny-chat", "transport": transport}
                for name, transport in (("http", "auto"), ("handle", "handle"))]
    env = {"env_vars": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}}
    config = {"http_options": {"host": "127.0.0.1", "port": port}, "applications": [
        {"name": "router", "route_prefix": "/", "import_path": "serve_apps.router.app:build_router_app",
         "runtime_env": env, "args": {
             "engines": [{"name": "tiny-chat", "model": "builtin:tiny-chat", "kv_cache_gb": 1, "max_ongoing_requests": 256}],
             "backends": backends, "router": {"listen": {"port": listen}}}}]}
    (workdir / "serve.yaml").write_text(yaml.safe_dump(config))
    results = []
    try:
        cluster.deploy(workdir / "serve.yaml")
        wait_http(router + "/health", 600)
        direct, direct_headers = _engine_endpoint(cluster, router, timeout=600)
        targets = {"direct": (direct, direct_headers), "router_handle": (router, {"x-backend": "handle"}),
                   "router_http": (router, {"x-backend": "http"})}
        for url, headers in targets.values():
            asyncio.run(lean_streams(url, 8, 16, headers=headers))
        names = list(targets)
        for index in range(rounds):
            result = {"round": index}
            for name in names[index % len(names):] + names[:index % len(names)]:
                url, headers = targets[name]
                time.sleep(pause)
                result[name] = asyncio.run(lean_streams(url, concurrency, tokens, headers=headers))
                print(f"round {index} {name:14} {result[name]['tokens_per_s']:8.0f} tok/s  "
                      f"TTFT {result[name]['ttft_median_ms']} ms  errors {result[name]['errors']}", flush=True)
            results.append(result)
    finally:
        cluster.stop()
    return results


def summarize(rounds: list[dict]) -> dict:
    summary = {f"{name}_ratio_to_direct": [r[name]["tokens_per_s"] / r["direct"]["tokens_per_s"] for r in rounds]
               for name in ("router_handle", "router_http")}
    for key in list(summary):
        summary[key + "_median"] = statistics.median(summary[key])
    for name in ("direct", "router_handle", "router_http"):
        summary[f"{name}_ttft_ms_median"] = statistics.median(r[name]["ttft_median_ms"] for r in rounds)
    return summary


def run(settings: BenchSettings) -> BenchOutput:
    concurrency, tokens, pause = (8, 16, 1.0) if settings.tiny else (64, 64, 3.0)
    rounds = measure(settings.workdir, settings.rounds, concurrency, tokens, pause, settings.haproxy)
    rows = [Row(round=r["round"], target=name, latencies_ms=r[name]["ttft_cdf_ms"],
                metrics={k: v for k, v in r[name].items() if k != "ttft_cdf_ms"})
            for r in rounds for name in ("direct", "router_handle", "router_http")]
    summary = summarize(rounds)
    return BenchOutput(rows=rows, headlines=[
        headline("router over HTTP tok/s / direct", summary["router_http_ratio_to_direct"]),
        headline("router over handle tok/s / direct", summary["router_handle_ratio_to_direct"]),
        headline("direct TTFT p50", summary["direct_ttft_ms_median"], "ms"),
        headline("router over HTTP TTFT p50", summary["router_http_ttft_ms_median"], "ms")],
        details={"concurrency": concurrency, "tokens": tokens})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--pause", type=float, default=3.0)
    args = parser.parse_args()
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    rounds = measure(workdir, args.rounds, args.concurrency, args.tokens, args.pause)
    summary = summarize(rounds)
    for key, value in summary.items():
        print(f"{key}: {value}")
    path = write_result("bench_router_stream", {"summary": summary, "rounds": rounds, "concurrency": args.concurrency,
                                                "tokens": args.tokens,
                                                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
