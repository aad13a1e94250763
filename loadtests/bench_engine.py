"""P1: vLLM's stock OpenAI server vs our engine replica behind Ray Serve, side by side.

    .venv/bin/python loadtests/bench_engine.py [--rounds 6] [--concurrency 64] [--max-tokens 64]

Both serve the built-in tiny model with the same vLLM args (enforce_eager, same KV cache). Rounds
alternate (a, b, b, a, ...) with a pause between them, because a just-finished engine busy-polls the
core the next one needs. Prints every round and the ratio of means b/a; writes JSON to
loadtests/results/bench_engine.json. Everything binds 127.0.0.1 and stops by itself.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launchers.local import LocalCluster, free_port  # noqa: E402
from loadtests.bench_router_lib import start_vllm  # noqa: E402
from loadtests.streamload import run_load  # noqa: E402
from serve_apps.models import ensure_tiny_model  # noqa: E402

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
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "bench_engine.json")
    args = parser.parse_args()

    ensure_tiny_model()
    workdir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    stock_port, serve_port = free_port(), free_port()
    print(f"starting stock vLLM server (:{stock_port}) and Serve engine replica (:{serve_port}); ~2 min",
          file=sys.stderr)
    cluster = None
    with ThreadPoolExecutor(1) as pool:  # both start-ups overlap
        stock_future = pool.submit(start_vllm, workdir / "stock.log", stock_port, args.kv_cache_gb, 600)
        try:
            cluster = start_serve(serve_port, args.kv_cache_gb, args.haproxy, workdir)
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
        for label, url in targets.items():  # warm both (JIT, allocator, connection setup)
            asyncio.run(run_load(label, url, MODEL, concurrency=8, per_worker=1, max_tokens=8))
        rounds: list[dict] = []
        for i in range(args.rounds):
            order = ["stock", "serve"] if i % 2 == 0 else ["serve", "stock"]
            for label in order:
                time.sleep(args.pause)
                result = asyncio.run(run_load(label, targets[label], MODEL, concurrency=args.concurrency,
                                              per_worker=args.per_worker, max_tokens=args.max_tokens))
                rounds.append({"round": i, **result.as_dict()})
                print(f"round {i} {label:5s} {result.tokens_per_s:8.0f} tok/s  ttft p50 {result.ttft_median_ms:6.0f} ms"
                      f"  errors {result.errors}", flush=True)
        mean = {lab: statistics.mean(r["tokens_per_s"] for r in rounds if r["label"] == lab) for lab in targets}
        per_round = [next(r for r in rounds if r["round"] == i and r["label"] == "serve")["tokens_per_s"]
                     / next(r for r in rounds if r["round"] == i and r["label"] == "stock")["tokens_per_s"]
                     for i in range(args.rounds)]
        summary = {"benchmark": "P1 engine replica vs stock vLLM server", "haproxy": args.haproxy,
                   "workload": {"concurrency": args.concurrency, "per_worker": args.per_worker,
                                "max_tokens": args.max_tokens, "stream": True},
                   "mean_tokens_per_s": mean, "ratio_of_means": mean["serve"] / mean["stock"],
                   "per_round_ratios": per_round, "median_round_ratio": statistics.median(per_round),
                   "target": 0.95, "rounds": rounds}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
        print(f"stock {mean['stock']:.0f} tok/s, serve {mean['serve']:.0f} tok/s, ratio b/a = "
              f"{summary['ratio_of_means']:.2f} (median round {summary['median_round_ratio']:.2f}); "
              f"wrote {args.out}")
        return 0
    finally:
        cluster.stop()
        stock.kill()

if __name__ == "__main__":
    sys.exit(main())
