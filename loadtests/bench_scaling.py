"""Scaling: how throughput and time to first token grow with load, for the stock vLLM server, the front
door (the router's listener in front of that same server) and LiteLLM's proxy (same server); and what
one request costs the router in CPU with 1, 2 and 4 backends configured.

Curves: streaming completions (``--max-tokens`` tokens, ignore_eos) at concurrency 1, 4, 16, 64, 128,
every level with the three servers in rotated order, every round repeating every level. CPU: one
router app per backend count (``r1``, ``r2``, ``r4``, every backend the same stock server, one tier),
non-streaming max_tokens 1 at concurrency 16, CPU seconds of that app's replica over requests sent.
LiteLLM is skipped (with a note) when its venv is missing (loadtests/setup_litellm_venv.sh).

    .venv/bin/python -m loadtests.bench_scaling [--rounds 3] [--levels 1,4,16,64,128] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from launchers.local import LocalCluster, free_port
from loadtests.client import bench_body
from loadtests.load import closed_loop
from loadtests.output import progress, result_path, write_output
from loadtests.paths import LITELLM_VENV, ROOT
from loadtests.processes import cpu_seconds, stop_on_sigterm
from loadtests.servers import start_litellm, start_vllm, wait_http
from loadtests.streamload import completion_streams
from ray_serve_cai.bench.results import BenchOutput, BenchSettings, Row, headline

LEVELS = (1, 4, 16, 64, 128)
BACKEND_COUNTS = (1, 2, 4)
LITELLM_AUTH = {"authorization": "Bearer sk-bench-master"}


def per_worker(concurrency: int, tiny: bool) -> int:
    """Enough requests per level to read a p95 (>= 16 at low concurrency), 2 per worker above that."""
    return 1 if tiny else max(2, 16 // concurrency)


def start_routers(stock_url: str, workdir: Path) -> tuple[LocalCluster, dict[int, str]]:
    """One Ray cluster with a router app per backend count, each on its own listener port."""
    progress(f"starting a Ray cluster with routers of {', '.join(map(str, BACKEND_COUNTS))} backends (~60 s)")
    cluster = LocalCluster(extra_env={"PYTHONPATH": str(ROOT)}, log_path=workdir / "ray.log")
    cluster.start()
    ports = {n: free_port() for n in BACKEND_COUNTS}
    apps = [{"name": f"r{n}", "route_prefix": f"/r{n}", "import_path": "serve_apps.router.app:build_router_app",
             "args": {"backends": [{"name": f"b{i}", "kind": "openai", "url": stock_url, "models": ["tiny-chat"],
                                    "tier": 0} for i in range(n)],
                      "router": {"listen": {"port": ports[n]}}}} for n in BACKEND_COUNTS]
    config = {"http_options": {"host": "127.0.0.1", "port": free_port()}, "applications": apps}
    (workdir / "routers.yaml").write_text(yaml.safe_dump(config))
    try:
        cluster.deploy(workdir / "routers.yaml")
        urls = {n: f"http://127.0.0.1:{port}" for n, port in ports.items()}
        for url in urls.values():
            wait_http(url + "/health", 300)
    except BaseException:
        cluster.stop()
        raise
    return cluster, urls


def measure(workdir: Path, rounds: int, levels: tuple[int, ...], max_tokens: int, tiny: bool, pause: float
            ) -> tuple[list[dict], list[dict], str | None]:
    stock = start_vllm(workdir / "vllm.log")
    cluster = litellm = None
    curves: list[dict] = []
    cpu: list[dict] = []
    note = None
    try:
        cluster, routers = start_routers(stock.url, workdir)
        targets: dict[str, tuple[str, dict[str, str] | None]] = {"stock vLLM": (stock.url, None),
                                                                 "front door": (routers[1], None)}
        if (LITELLM_VENV / "bin" / "litellm").exists():
            litellm = start_litellm([stock.url], workdir)
            targets["LiteLLM"] = (litellm.url, LITELLM_AUTH)
        else:
            note = "LiteLLM skipped: run loadtests/setup_litellm_venv.sh"
            print(note, flush=True)
        for url, headers in targets.values():  # warm every path
            asyncio.run(completion_streams(url, 4, 1, 4, headers))
        names = list(targets)
        for index in range(rounds):
            for step, concurrency in enumerate(levels):
                rotation = (index + step) % len(names)
                for name in names[rotation:] + names[:rotation]:
                    url, headers = targets[name]
                    time.sleep(pause)
                    result = asyncio.run(completion_streams(url, concurrency, per_worker(concurrency, tiny),
                                                            max_tokens, headers))
                    curves.append({"round": index, "concurrency": concurrency, "label": name, **result})
                    print(f"round {index} c={concurrency:<4} {name:11} {result['requests_per_s']:7.1f} req/s  "
                          f"TTFT p50 {result['ttft_median_ms'] or float('nan'):7.1f} "
                          f"p95 {result['ttft_p95_ms'] or float('nan'):7.1f} ms  "
                          f"errors {result['errors']}", flush=True)
            for count in BACKEND_COUNTS:
                time.sleep(pause)
                before = cpu_seconds(f"ServeReplica:r{count}:")
                run = asyncio.run(closed_loop(routers[count], bench_body(1), 16, 2.0 if tiny else 6.0))
                spent = cpu_seconds(f"ServeReplica:r{count}:") - before
                cpu.append({"round": index, "backends": count, "rps": run["rps"], "errors": run["errors"],
                            "router_cpu_ms_per_request": spent * 1000 / max(run["sent"], 1)})
                print(f"round {index} router with {count} backend(s): {cpu[-1]['router_cpu_ms_per_request']:.2f} "
                      f"CPU ms/request at {run['rps']:.0f} req/s", flush=True)
    finally:
        if litellm:
            litellm.kill()
        if cluster:
            cluster.stop()
        stock.kill()
    return curves, cpu, note


def to_output(curves: list[dict], cpu: list[dict], note: str | None, details: dict[str, Any]) -> BenchOutput:
    rows = [Row(round=c["round"], target=c["label"], latencies_ms=c["ttft_cdf_ms"], metrics={
        "concurrency": c["concurrency"], "rps": c["requests_per_s"], "tokens_per_s": c["tokens_per_s"],
        "ttft_p50_ms": c["ttft_median_ms"], "ttft_p95_ms": c["ttft_p95_ms"], "errors": c["errors"]}) for c in curves]
    rows += [Row(round=c["round"], target=f"router, {c['backends']} backend(s)", metrics={
        "backends": c["backends"], "router_cpu_ms_per_request": c["router_cpu_ms_per_request"], "c16_rps": c["rps"],
        "errors": c["errors"]}) for c in cpu]
    top = max(c["concurrency"] for c in curves)

    def at(name: str, key: str, level: int) -> list[float]:
        return [c[key] for c in curves if c["label"] == name and c["concurrency"] == level]

    headlines = []
    for name in sorted({c["label"] for c in curves}):
        headlines += [headline(f"{name} req/s at c={top}", at(name, "requests_per_s", top)),
                      headline(f"{name} TTFT p50 at c={top}", at(name, "ttft_median_ms", top), "ms"),
                      headline(f"{name} TTFT p95 at c={top}", at(name, "ttft_p95_ms", top), "ms")]
    stock = statistics.median(at("stock vLLM", "requests_per_s", top))
    headlines.append(headline(f"front door req/s / stock at c={top}",
                              statistics.median(at("front door", "requests_per_s", top)) / stock if stock else None))
    for count in BACKEND_COUNTS:
        headlines.append(headline(f"router CPU per request, {count} backend(s)",
                                  [c["router_cpu_ms_per_request"] for c in cpu if c["backends"] == count], "ms"))
    return BenchOutput(rows=rows, headlines=headlines, details={**details, "note": note})


def run(settings: BenchSettings) -> BenchOutput:
    levels, max_tokens, pause = ((1, 4, 16), 8, 1.0) if settings.tiny else (LEVELS, 32, 3.0)
    curves, cpu, note = measure(settings.workdir, settings.rounds, levels, max_tokens, settings.tiny, pause)
    return to_output(curves, cpu, note, {"levels": list(levels), "max_tokens": max_tokens,
                                         "request": "streaming completions, ignore_eos"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrency levels, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--pause", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=result_path("bench_scaling"))
    args = parser.parse_args()
    stop_on_sigterm()
    levels = tuple(int(x) for x in args.levels.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    curves, cpu, note = measure(workdir, args.rounds, levels, args.max_tokens, False, args.pause)
    output = to_output(curves, cpu, note, {"levels": list(levels), "max_tokens": args.max_tokens})
    write_output(output, args.out)


if __name__ == "__main__":
    main()
