"""P1: vLLM's stock OpenAI server vs our engine replica behind Ray Serve, side by side.

    .venv/bin/python -m loadtests.bench_engine [--rounds 6] [--concurrency 64] [--max-tokens 64]

Both serve the built-in tiny model with the same vLLM args (enforce_eager, same KV cache). Rounds
alternate (a, b, b, a, ...) with a pause between them, because a just-finished engine busy-polls the
core the next one needs. Prints every round and the ratio of means b/a; writes JSON to
loadtests/results/<date>-<commit>-bench_engine.json. Everything binds 127.0.0.1 and stops by itself. ``run`` is the same
measurement for ``ray-serve-cai bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from launchers.local import LocalCluster, free_port
from loadtests.output import result_path
from loadtests.processes import stop_on_sigterm
from loadtests.servers import start_vllm
from loadtests.streamload import completion_streams
from ray_serve_cai.bench.results import BenchOutput, BenchSettings, Row, headline
from serve_apps.models import ensure_tiny_model

MODEL = "tiny-chat"


def start_serve(port: int, kv_gb: int, haproxy: bool, workdir: Path) -> LocalCluster:
    cluster = LocalCluster(haproxy=haproxy).start()
    config = {"http_options": {"host": "127.0.0.1", "port": port},
              "applications": [{"name": "llm", "route_prefix": "/", "import_path": "serve_apps.apps:build_app",
                                "args": {"name": MODEL, "model": "builtin:tiny-chat", "kv_cache_gb": kv_gb,
                                         "max_ongoing_requests": 512}}]}
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    cluster.deploy(path)
    return cluster


def measure(workdir: Path, rounds: int, concurrency: int, per_worker: int, max_tokens: int, pause: float,
            kv_cache_gb: int, haproxy: bool) -> list[dict]:
    """Start both servers (start-ups overlap), alternate ``rounds`` rounds, stop both."""
    ensure_tiny_model()
    stock_port, serve_port = free_port(), free_port()
    print(f"starting stock vLLM server (:{stock_port}) and Serve engine replica (:{serve_port}); ~2 min",
          file=sys.stderr)
    cluster = None
    with ThreadPoolExecutor(1) as pool:  # both start-ups overlap
        stock_future = pool.submit(start_vllm, workdir / "stock.log", stock_port, kv_cache_gb, 600)
        try:
            cluster = start_serve(serve_port, kv_cache_gb, haproxy, workdir)
            cluster.wait_ready(f"http://127.0.0.1:{serve_port}/health", timeout_s=600)
            stock = stock_future.result()
        except BaseException:
            if cluster is not None:
                cluster.stop()
            if stock_future.exception() is None:  # waits for the stock server, then stops it
                stock_future.result().kill()
            raise
    try:
        targets = {"stock": f"http://127.0.0.1:{stock_port}", "serve": f"http://127.0.0.1:{serve_port}"}
        for url in targets.values():  # warm both (JIT, allocator, connection setup)
            asyncio.run(completion_streams(url, 8, 1, 8, model=MODEL))
        results: list[dict] = []
        for i in range(rounds):
            order = ["stock", "serve"] if i % 2 == 0 else ["serve", "stock"]
            for label in order:
                time.sleep(pause)
                result = asyncio.run(completion_streams(targets[label], concurrency, per_worker, max_tokens,
                                                        model=MODEL))
                results.append({"round": i, "label": label, **result})
                print(f"round {i} {label:5s} {result['tokens_per_s']:8.0f} tok/s  ttft p50 {result['ttft_median_ms'] or float('nan'):6.0f} ms"
                      f"  errors {result['errors']}", flush=True)
        return results
    finally:
        cluster.stop()
        stock.kill()


def per_round_ratios(rounds: list[dict]) -> list[float]:
    count = max(r["round"] for r in rounds) + 1
    side = {(r["round"], r["label"]): r["tokens_per_s"] for r in rounds}
    return [side[i, "serve"] / side[i, "stock"] for i in range(count)]


def run(settings: BenchSettings) -> BenchOutput:
    concurrency, per_worker, max_tokens, pause = (8, 1, 16, 1.0) if settings.tiny else (64, 2, 64, 4.0)
    rounds = measure(settings.workdir, settings.rounds, concurrency, per_worker, max_tokens, pause, 1, settings.haproxy)
    rows = [Row(round=r["round"], target="stock vLLM" if r["label"] == "stock" else "engine replica (Serve)",
                latencies_ms=r["ttft_cdf_ms"],
                metrics={k: r[k] for k in ("tokens_per_s", "requests_per_s", "ttft_median_ms", "ttft_p95_ms", "errors")})
            for r in rounds]
    return BenchOutput(rows=rows, headlines=[
        headline("engine replica tok/s / stock (median round)", per_round_ratios(rounds), at_least=0.95),
        headline("stock vLLM tok/s", [r["tokens_per_s"] for r in rounds if r["label"] == "stock"], "tok/s"),
        headline("engine replica TTFT p50", [r["ttft_median_ms"] for r in rounds if r["label"] == "serve"], "ms"),
        headline("stock vLLM TTFT p50", [r["ttft_median_ms"] for r in rounds if r["label"] == "stock"], "ms")],
        details={"concurrency": concurrency, "per_worker": per_worker, "max_tokens": max_tokens,
                 "ingress": "haproxy" if settings.haproxy else "python proxy"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per target (default 6)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--per-worker", type=int, default=2, help="sequential requests per worker per round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--pause", type=float, default=4.0, help="seconds between rounds (engine busy-poll)")
    parser.add_argument("--kv-cache-gb", type=int, default=1)
    parser.add_argument("--haproxy", action="store_true",
                        help="Serve's HAProxy ingress (binds stats/metrics on all interfaces: run inside "
                             "`unshare -n`, see loadtests/README.md)")
    parser.add_argument("--out", type=Path, default=result_path("bench_engine"))
    args = parser.parse_args()
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    rounds = measure(workdir, args.rounds, args.concurrency, args.per_worker, args.max_tokens, args.pause,
                     args.kv_cache_gb, args.haproxy)
    mean = {lab: statistics.mean(r["tokens_per_s"] for r in rounds if r["label"] == lab) for lab in ("stock", "serve")}
    per_round = per_round_ratios(rounds)
    summary = {"benchmark": "P1 engine replica vs stock vLLM server", "haproxy": args.haproxy,
               "workload": {"concurrency": args.concurrency, "per_worker": args.per_worker,
                            "max_tokens": args.max_tokens, "stream": True},
               "mean_tokens_per_s": mean, "ratio_of_means": mean["serve"] / mean["stock"],
               "per_round_ratios": per_round, "median_round_ratio": statistics.median(per_round),
               "target": 0.95, "rounds": rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"stock {mean['stock']:.0f} tok/s, serve {mean['serve']:.0f} tok/s, ratio b/a = "
          f"{summary['ratio_of_means']:.2f} (median round {summary['median_round_ratio']:.2f}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
