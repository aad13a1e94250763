"""P5: the seed's targets under locust, headless, through the front door: >= 10 req/s for 2 minutes,
TTFT p50 < 500 ms and p95 < 2 s, error rate < 1 %; and the same run with the preferred backend
SIGKILLed at minute 1 (error rate still < 1 %).

Two stock vLLM servers (``a`` tier 0, ``b`` tier 1) behind the router's listener (the front door).
Rounds alternate the front door with server ``a`` called directly (the baseline: the same locust load
without the router); the kill run comes last. Locust runs ``loadtests/locustfile.py`` with chat and
streaming users (``--users`` users at ``--rate-per-user`` req/s each) and writes its CSVs; the numbers
are read from them (TTFT is the locustfile's own ``TTFT`` entry).

    .venv/bin/python -m loadtests.bench_locust [--rounds 2] [--duration 120] [--users 12]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from launchers.local import free_port
from loadtests.output import result_path, write_output
from loadtests.paths import ROOT
from loadtests.processes import stop_on_sigterm
from loadtests.servers import start_router, start_vllm
from ray_serve_cai.bench.results import BenchOutput, BenchSettings, Row, TimelinePoint, headline

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
TTFT = "TTFT"


def locust(url: str, prefix: Path, duration: float, users: int, rate_per_user: float, max_tokens: int,
           kill_at: float | None = None, kill=None, model: str = "tiny-chat", env: dict[str, str] | None = None) -> None:
    """One headless locust run; with ``kill_at``, ``kill()`` is called that many seconds in. ``env`` adds
    variables (``OPENAI_API_KEY``: a key the locustfile sends, never on the command line)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url, "-u", str(users),
           "-r", str(users), "-t", f"{int(duration)}s", "--csv", str(prefix), "--csv-full-history", "--only-summary",
           "--stop-timeout", "10", "--mix", "chat:1,stream:1", "--max-tokens", str(max_tokens),
           "--rate-per-user", str(rate_per_user), "--model", model, "--loglevel", "WARNING"]
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=open(f"{prefix}.log", "wb"), env={**os.environ, **(env or {})})
    try:
        if kill_at is not None:
            time.sleep(kill_at)
            kill()
        process.wait(duration + 60)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


def read_stats(prefix: Path) -> dict[str, Any]:
    """Requests, failures, req/s (every request entry but TTFT) and TTFT p50/p95 from locust's CSV."""
    rows = list(csv.DictReader(open(f"{prefix}_stats.csv")))
    requests = [r for r in rows if r["Name"] not in ("Aggregated", TTFT)]
    count = sum(int(r["Request Count"]) for r in requests)
    failures = sum(int(r["Failure Count"]) for r in requests)
    ttft = next((r for r in rows if r["Name"] == TTFT), None)

    def number(row: dict | None, key: str) -> float | None:
        return float(row[key]) if row and row.get(key) not in (None, "", "N/A") else None

    return {"requests": count, "failures": failures, "error_rate": failures / count if count else None,
            "rps": sum(float(r["Requests/s"]) for r in requests),
            "ttft_p50_ms": number(ttft, "50%"), "ttft_p95_ms": number(ttft, "95%"), "ttft_p99_ms": number(ttft, "99%"),
            "latency_p50_ms": number(next((r for r in rows if r["Name"] == "Aggregated"), None), "50%")}


def read_timeline(prefix: Path) -> list[TimelinePoint]:
    """Locust's current req/s and failures/s per second (its moving window), request entries only."""
    by_time: dict[int, list[float]] = {}
    for row in csv.DictReader(open(f"{prefix}_stats_history.csv")):
        if row["Name"] in ("Aggregated", TTFT) or row["Requests/s"] in ("", "N/A"):
            continue
        cell = by_time.setdefault(int(row["Timestamp"]), [0.0, 0.0])
        cell[0] += float(row["Requests/s"])
        cell[1] += float(row["Failures/s"])
    start = min(by_time, default=0)
    return [TimelinePoint(t=float(t - start), requests=round(r), errors=round(f)) for t, (r, f) in sorted(by_time.items())]


def measure(workdir: Path, rounds: int, duration: float, kill_at: float, users: int, rate_per_user: float,
            max_tokens: int, pause: float) -> tuple[list[dict], dict, list[TimelinePoint]]:
    with ThreadPoolExecutor(2) as pool:
        a, b = (f.result() for f in [pool.submit(start_vllm, workdir / f"vllm-{n}.log") for n in ("a", "b")])
    cluster = None
    runs: list[dict] = []
    try:
        backends = [{"name": "a", "kind": "openai", "url": a.url, "models": ["tiny-chat"], "tier": 0},
                    {"name": "b", "kind": "openai", "url": b.url, "models": ["tiny-chat"], "tier": 1}]
        listen = free_port()
        cluster, _ = start_router(backends, workdir, listen_port=listen, haproxy=False)
        targets = {"front door": f"http://127.0.0.1:{listen}", "stock vLLM": a.url}
        for index in range(rounds):
            order = list(targets) if index % 2 == 0 else list(targets)[::-1]
            for name in order:
                time.sleep(pause)
                prefix = workdir / f"r{index}-{name.replace(' ', '_')}"
                locust(targets[name], prefix, duration, users, rate_per_user, max_tokens)
                runs.append({"round": index, "target": name, **read_stats(prefix)})
                print(f"round {index} {name:10} {runs[-1]['rps']:5.1f} req/s  TTFT p50 {runs[-1]['ttft_p50_ms']} "
                      f"p95 {runs[-1]['ttft_p95_ms']} ms  errors {runs[-1]['failures']}/{runs[-1]['requests']}", flush=True)
        time.sleep(pause)
        prefix = workdir / "kill"
        locust(targets["front door"], prefix, duration, users, rate_per_user, max_tokens, kill_at, a.kill)
        killed = {"round": rounds, "target": "front door, a killed", **read_stats(prefix)}
        print(f"kill run: {killed['rps']:5.1f} req/s  TTFT p95 {killed['ttft_p95_ms']} ms  "
              f"errors {killed['failures']}/{killed['requests']}", flush=True)
        timeline = read_timeline(prefix)
    finally:
        if cluster:
            cluster.stop()
        a.kill()
        b.kill()
    return runs, killed, timeline


def to_output(runs: list[dict], killed: dict, timeline: list[TimelinePoint], details: dict[str, Any]) -> BenchOutput:
    rows = [Row(round=r["round"], target=r["target"], metrics={k: v for k, v in r.items() if k not in ("round", "target")})
            for r in [*runs, killed]]

    def values(target: str, key: str) -> list[float | None]:
        return [r[key] for r in runs if r["target"] == target]

    headlines = [headline("front door req/s", values("front door", "rps"), at_least=10),
                 headline("front door TTFT p50", values("front door", "ttft_p50_ms"), "ms", at_most=500),
                 headline("front door TTFT p95", values("front door", "ttft_p95_ms"), "ms", at_most=2000),
                 headline("front door error rate", values("front door", "error_rate"), at_most=0.01),
                 headline("stock vLLM TTFT p50 (same load)", values("stock vLLM", "ttft_p50_ms"), "ms"),
                 headline("stock vLLM TTFT p95 (same load)", values("stock vLLM", "ttft_p95_ms"), "ms"),
                 headline("backend killed: req/s", killed["rps"], at_least=10),
                 headline("backend killed: error rate", killed["error_rate"], at_most=0.01),
                 headline("backend killed: TTFT p95", killed["ttft_p95_ms"], "ms", at_most=2000)]
    return BenchOutput(rows=rows, headlines=headlines, timeline=timeline,
                       events={"kill": details["kill_at_s"]}, details=details)


def run(settings: BenchSettings) -> BenchOutput:
    duration, kill_at, users, pause = (20.0, 10.0, 4, 1.0) if settings.tiny else (120.0, 60.0, 12, 3.0)
    runs, killed, timeline = measure(settings.workdir, settings.rounds, duration, kill_at, users, 1.0, 32, pause)
    return to_output(runs, killed, timeline, {"duration_s": duration, "kill_at_s": kill_at, "users": users,
                                              "rate_per_user": 1.0, "max_tokens": 32, "mix": "chat:1,stream:1"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--kill-at", type=float, default=60.0)
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--rate-per-user", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=result_path("bench_locust_p5"))
    args = parser.parse_args()
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="bench-locust-"))
    runs, killed, timeline = measure(workdir, args.rounds, args.duration, args.kill_at, args.users,
                                     args.rate_per_user, args.max_tokens, 3.0)
    output = to_output(runs, killed, timeline, {"duration_s": args.duration, "kill_at_s": args.kill_at, "users": args.users,
                                                "rate_per_user": args.rate_per_user, "max_tokens": args.max_tokens})
    write_output(output, args.out)


if __name__ == "__main__":
    main()
