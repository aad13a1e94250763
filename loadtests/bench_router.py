"""P2 / P2b: the router's added latency and throughput against the same backend called directly, and
(``--litellm``) against a LiteLLM proxy with the same backends and fallback.

One invocation runs every target in alternating rounds (direct, router, router-serve[, litellm],
direct, ...) with a pause between runs (vLLM's worker busy-polls ~1 s after its last request),
non-streaming, max_tokens 1. Concurrency 1 -> median added latency, measured interleaved (one request
to each target in turn, so all see the same moments of a noisy shared box); concurrency 64 ->
throughput ratio to direct, alternating runs. ``router`` is the router's own listener (``router.listen``, the data plane we recommend);
``router-serve`` is the same router replica reached through Serve's ingress (HAProxy by default),
reported alongside so the cost of Serve's proxy path stays visible.

    .venv/bin/python -m loadtests.bench_router [--backend-url http://127.0.0.1:PORT] [--litellm]

``run_p2`` / ``run_p2b`` are the same measurement for ``ray-serve-cai bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from launchers.local import free_port
from loadtests.client import bench_body
from loadtests.load import closed_loop, interleaved
from loadtests.output import write_result
from loadtests.processes import cpu_seconds, stop_on_sigterm
from loadtests.servers import start_litellm, start_router, start_vllm
from ray_serve_cai.bench.results import BenchOutput, BenchSettings, Row, headline

# Processes whose CPU per request each c=64 run reports (matched on the command line).
CPU_WATCH = {"router": "ServeReplica:router", "backend": "vllm.entrypoints.openai.api_server"}


def measure(workdir: Path, rounds: int, duration: float, pause: float, *, litellm: bool = False, haproxy: bool = True,
            provider: str = "hosted_vllm", backend_url: str | None = None, concurrency: int = 64) -> list[dict]:
    """Start what is missing (stock vLLM, the router, LiteLLM), run ``rounds`` rounds, stop it all."""
    vllm = None
    if backend_url:
        backend = backend_url.rstrip("/")
    else:
        vllm = start_vllm(workdir / "vllm.log")
        backend = vllm.url
    cluster = proxy = None
    results: list[dict] = []
    try:
        router_backends = [
            {"name": "primary", "kind": "openai", "url": backend, "models": ["tiny-chat"], "tier": 0},
            {"name": "fallback", "kind": "openai", "url": backend, "models": ["tiny-chat"], "tier": 1},
        ]
        listen_port = free_port()
        cluster, serve_url = start_router(router_backends, workdir, haproxy=haproxy, listen_port=listen_port)
        proxy = start_litellm([backend, backend], workdir, provider) if litellm else None
        targets = {"direct": (backend, None), "router": (f"http://127.0.0.1:{listen_port}", None),
                   "router-serve": (serve_url, None)}
        if proxy:
            targets["litellm"] = (proxy.url, {"authorization": "Bearer sk-bench-master"})
        body = bench_body(1)
        for url, headers in targets.values():  # warm every path once
            asyncio.run(closed_loop(url, body, 4, 2.0, headers, warmup=0.5))
        for index in range(rounds):
            result: dict = {"round": index}
            time.sleep(pause)
            paired = asyncio.run(interleaved(targets, body, duration * len(targets)))
            for name, run in paired.items():
                result[f"{name}_c1"] = run
                print(f"round {index} c=1   {name:12} {run['requests']:5} requests  median {run['median_ms']:.2f} ms"
                      f"  errors {run['errors']}", flush=True)
            names = list(targets)  # c=64 order rotates round by round: no target always runs first
            for name in names[index % len(names):] + names[:index % len(names)]:
                url, headers = targets[name]
                time.sleep(pause)
                before = {label: cpu_seconds(match) for label, match in CPU_WATCH.items()}
                run = asyncio.run(closed_loop(url, body, concurrency, duration, headers))
                for label, match in CPU_WATCH.items():
                    spent = cpu_seconds(match) - before[label]
                    run[f"{label}_cpu_ms_per_request"] = round(spent * 1000 / max(run["sent"], 1), 3)
                result[f"{name}_c64"] = run
                print(f"round {index} c={concurrency}  {name:12} {run['rps']:7.1f} req/s  median {run['median_ms']:.0f} ms"
                      f"  errors {run['errors']}  CPU ms/request: router {run['router_cpu_ms_per_request']:.2f}"
                      f", backend server {run['backend_cpu_ms_per_request']:.2f}", flush=True)
            results.append(result)
    finally:
        if proxy:
            proxy.kill()
        if cluster:
            cluster.stop()
        if vllm:
            vllm.kill()
    return results


def _added(rounds: list[dict], name: str) -> list[float]:
    return [r[f"{name}_c1"]["median_ms"] - r["direct_c1"]["median_ms"] for r in rounds]


def _ratio(rounds: list[dict], name: str) -> list[float]:
    return [r[f"{name}_c64"]["rps"] / r["direct_c64"]["rps"] for r in rounds]


def summarize(rounds: list[dict], litellm: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, key in (("router", "router"), ("router-serve", "router_serve")):
        summary[f"{key}_added_ms_c1"] = _added(rounds, name)
        summary[f"{key}_throughput_ratio_c64"] = _ratio(rounds, name)
        summary[f"{key}_added_ms_c1_median"] = statistics.median(summary[f"{key}_added_ms_c1"])
        summary[f"{key}_throughput_ratio_c64_median"] = statistics.median(summary[f"{key}_throughput_ratio_c64"])
    summary["targets"] = {"p2_added_ms_le": 2.0, "p2_ratio_ge": 0.90}
    if litellm:
        summary["litellm_added_ms_c1"] = _added(rounds, "litellm")
        summary["litellm_throughput_ratio_c64"] = _ratio(rounds, "litellm")
        summary["litellm_added_ms_c1_median"] = statistics.median(summary["litellm_added_ms_c1"])
        summary["litellm_throughput_ratio_c64_median"] = statistics.median(summary["litellm_throughput_ratio_c64"])
        summary["router_vs_litellm_added_latency"] = summary["router_added_ms_c1_median"] / summary["litellm_added_ms_c1_median"]
        summary["router_vs_litellm_throughput"] = (summary["router_throughput_ratio_c64_median"]
                                                  / summary["litellm_throughput_ratio_c64_median"])
        summary["targets"].update({"p2b_latency_fraction_le": 0.1, "p2b_throughput_multiple_ge": 4.0})
    return summary


def to_output(rounds: list[dict], litellm: bool, settings: dict[str, Any]) -> BenchOutput:
    """Every target of every round as a row (c=1 latency sample for the CDF), the P2/P2b headlines."""
    names = sorted({key.rsplit("_", 1)[0] for r in rounds for key in r if key.endswith("_c1")})
    rows = []
    for r in rounds:
        for name in names:
            c1, c64 = r[f"{name}_c1"], r[f"{name}_c64"]
            rows.append(Row(round=r["round"], target=name, latencies_ms=c1["cdf_ms"], metrics={
                "c1_median_ms": c1["median_ms"], "c1_p99_ms": c1["p99_ms"], "c1_errors": c1["errors"],
                "c64_rps": c64["rps"], "c64_median_ms": c64["median_ms"], "c64_p99_ms": c64["p99_ms"],
                "c64_errors": c64["errors"], "router_cpu_ms_per_request": c64["router_cpu_ms_per_request"],
                "backend_cpu_ms_per_request": c64["backend_cpu_ms_per_request"]}))
    router_cpu = [r["router_c64"]["router_cpu_ms_per_request"] for r in rounds]
    headlines = [headline("router listener added latency c=1", _added(rounds, "router"), "ms", at_most=2.0),
                 headline("router listener throughput c=64 / direct", _ratio(rounds, "router"), at_least=0.9),
                 headline("router via Serve ingress added latency c=1", _added(rounds, "router-serve"), "ms"),
                 headline("router via Serve ingress throughput c=64 / direct", _ratio(rounds, "router-serve")),
                 headline("router CPU per request (c=64)", router_cpu, "ms")]
    if litellm:
        summary = summarize(rounds, True)
        headlines += [headline("LiteLLM added latency c=1", summary["litellm_added_ms_c1"], "ms"),
                      headline("LiteLLM throughput c=64 / direct", summary["litellm_throughput_ratio_c64"]),
                      headline("router added latency / LiteLLM's", summary["router_vs_litellm_added_latency"],
                               at_most=0.1),
                      headline("router throughput / LiteLLM's", summary["router_vs_litellm_throughput"], at_least=4.0)]
    return BenchOutput(rows=rows, headlines=headlines, details={"settings": settings})


def _run(settings: BenchSettings, litellm: bool) -> BenchOutput:
    duration, pause = (2.0, 1.0) if settings.tiny else (8.0, 3.0)
    rounds = measure(settings.workdir, settings.rounds, duration, pause, litellm=litellm, haproxy=settings.haproxy)
    return to_output(rounds, litellm, {"duration_s": duration, "pause_s": pause, "request": "chat, non-streaming, "
                                       "max_tokens 1", "backend": "stock vLLM OpenAI server, tiny-chat",
                                       "router_serve": "haproxy" if settings.haproxy else "python proxy"})


def run_p2(settings: BenchSettings) -> BenchOutput:
    return _run(settings, litellm=False)


def run_p2b(settings: BenchSettings) -> BenchOutput:
    return _run(settings, litellm=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend-url", help="a running stock vLLM server (default: start one)")
    parser.add_argument("--litellm", action="store_true", help="also run the LiteLLM proxy (P2b)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--pause", type=float, default=3.0)
    parser.add_argument("--litellm-provider", default="hosted_vllm", help="LiteLLM provider prefix (hosted_vllm, openai)")
    parser.add_argument("--no-haproxy", action="store_true", help="Serve's Python proxy instead of HAProxy")
    args = parser.parse_args()
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="bench-router-"))
    rounds = measure(workdir, args.rounds, args.duration, args.pause, litellm=args.litellm,
                     haproxy=not args.no_haproxy, provider=args.litellm_provider, backend_url=args.backend_url)
    summary = summarize(rounds, args.litellm)
    for key, value in summary.items():
        print(f"{key}: {value}")
    path = write_result("bench_router_p2b" if args.litellm else "bench_router_p2",
                        {"summary": summary, "rounds": rounds, "backend": "stock vLLM OpenAI server, tiny-chat",
                         "request": "chat, non-streaming, max_tokens 1", "duration_s": args.duration,
                         "router": "router listener (router.listen)",
                         "router_serve": "router via Serve ingress: " + ("python proxy" if args.no_haproxy else "haproxy"),
                         "litellm_provider": args.litellm_provider if args.litellm else None,
                         "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
