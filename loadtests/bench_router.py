"""P2 / P2b: the router's added latency and throughput against the same backend called directly, and
(``--litellm``) against a LiteLLM proxy with the same backends and fallback.

One invocation runs every target in alternating rounds (direct, router, router-serve[, litellm],
direct, ...) with a pause between runs (vLLM's worker busy-polls ~1 s after its last request),
non-streaming, max_tokens 1. Concurrency 1 -> median added latency, measured interleaved (one request
to each target in turn, so all see the same moments of a noisy shared box); concurrency 64 ->
throughput ratio to direct, alternating runs. ``router`` is the router's own listener (``router.listen``, the data plane we recommend);
``router-serve`` is the same router replica reached through Serve's ingress (HAProxy by default),
reported alongside so the cost of Serve's proxy path stays visible.

    .venv/bin/python loadtests/bench_router.py [--backend-url http://127.0.0.1:PORT] [--litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench_router_lib import (
    bench_body,
    closed_loop,
    cpu_seconds,
    free_port,
    interleaved,
    start_litellm,
    start_router,
    start_vllm,
    stop_on_sigterm,
    write_result,
)


# Processes whose CPU per request each c=64 run reports (matched on the command line).
CPU_WATCH = {"router": "ServeReplica:router", "backend": "vllm.entrypoints.openai.api_server"}


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
    vllm = None
    if args.backend_url:
        backend = args.backend_url.rstrip("/")
    else:
        vllm = start_vllm(workdir / "vllm.log")
        backend = vllm.url
    router_backends = [
        {"name": "primary", "kind": "openai", "url": backend, "models": ["tiny-chat"], "tier": 0},
        {"name": "fallback", "kind": "openai", "url": backend, "models": ["tiny-chat"], "tier": 1},
    ]
    listen_port = free_port()
    cluster, serve_url = start_router(router_backends, workdir, haproxy=not args.no_haproxy, listen_port=listen_port)
    litellm = start_litellm([backend, backend], workdir, args.litellm_provider) if args.litellm else None
    targets = {"direct": (backend, None), "router": (f"http://127.0.0.1:{listen_port}", None),
               "router-serve": (serve_url, None)}
    if litellm:
        targets["litellm"] = (litellm.url, {"authorization": "Bearer sk-bench-master"})
    body = bench_body(1)
    rounds: list[dict] = []
    try:
        for name, (url, headers) in targets.items():  # warm every path once
            asyncio.run(closed_loop(url, body, 4, 2.0, headers, warmup=0.5))
        for index in range(args.rounds):
            result: dict = {"round": index}
            time.sleep(args.pause)
            paired = asyncio.run(interleaved(targets, body, args.duration * len(targets)))
            for name, run in paired.items():
                result[f"{name}_c1"] = run
                print(f"round {index} c=1   {name:12} {run['requests']:5} requests  median {run['median_ms']:.2f} ms"
                      f"  errors {run['errors']}", flush=True)
            names = list(targets)  # c=64 order rotates round by round: no target always runs first
            for name in names[index % len(names):] + names[:index % len(names)]:
                url, headers = targets[name]
                time.sleep(args.pause)
                before = {label: cpu_seconds(match) for label, match in CPU_WATCH.items()}
                run = asyncio.run(closed_loop(url, body, 64, args.duration, headers))
                for label, match in CPU_WATCH.items():
                    spent = cpu_seconds(match) - before[label]
                    run[f"{label}_cpu_ms_per_request"] = round(spent * 1000 / max(run["sent"], 1), 3)
                result[f"{name}_c64"] = run
                print(f"round {index} c=64  {name:12} {run['rps']:7.1f} req/s  median {run['median_ms']:.0f} ms"
                      f"  errors {run['errors']}  CPU ms/request: router {run['router_cpu_ms_per_request']:.2f}"
                      f", backend server {run['backend_cpu_ms_per_request']:.2f}", flush=True)
            rounds.append(result)
    finally:
        if litellm:
            litellm.kill()
        cluster.stop()
        if vllm:
            vllm.kill()

    def added(name: str) -> list[float]:
        return [r[f"{name}_c1"]["median_ms"] - r["direct_c1"]["median_ms"] for r in rounds]

    def ratio(name: str) -> list[float]:
        return [r[f"{name}_c64"]["rps"] / r["direct_c64"]["rps"] for r in rounds]

    summary: dict = {}
    for name, key in (("router", "router"), ("router-serve", "router_serve")):
        summary[f"{key}_added_ms_c1"] = added(name)
        summary[f"{key}_throughput_ratio_c64"] = ratio(name)
        summary[f"{key}_added_ms_c1_median"] = statistics.median(summary[f"{key}_added_ms_c1"])
        summary[f"{key}_throughput_ratio_c64_median"] = statistics.median(summary[f"{key}_throughput_ratio_c64"])
    summary["targets"] = {"p2_added_ms_le": 2.0, "p2_ratio_ge": 0.90}
    if litellm:
        summary["litellm_added_ms_c1"] = added("litellm")
        summary["litellm_throughput_ratio_c64"] = ratio("litellm")
        summary["litellm_added_ms_c1_median"] = statistics.median(summary["litellm_added_ms_c1"])
        summary["litellm_throughput_ratio_c64_median"] = statistics.median(summary["litellm_throughput_ratio_c64"])
        summary["router_vs_litellm_added_latency"] = summary["router_added_ms_c1_median"] / summary["litellm_added_ms_c1_median"]
        summary["router_vs_litellm_throughput"] = (summary["router_throughput_ratio_c64_median"]
                                                  / summary["litellm_throughput_ratio_c64_median"])
        summary["targets"].update({"p2b_latency_fraction_le": 0.1, "p2b_throughput_multiple_ge": 4.0})
    for key, value in summary.items():
        print(f"{key}: {value}")
    path = write_result("bench_router_p2b" if litellm else "bench_router_p2",
                        {"summary": summary, "rounds": rounds, "backend": "stock vLLM OpenAI server, tiny-chat",
                         "request": "chat, non-streaming, max_tokens 1", "duration_s": args.duration,
                         "router": "router listener (router.listen)",
                         "router_serve": "router via Serve ingress: " + ("python proxy" if args.no_haproxy else "haproxy"),
                         "litellm_provider": args.litellm_provider if litellm else None,
                         "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
