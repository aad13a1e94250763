"""P3: kill the preferred backend (SIGKILL, a real stock vLLM server) during a steady 10 req/s run
through the router; count client-visible errors and measure how fast traffic moved to the fallback.

Half the requests stream (max_tokens 128, ~0.5 s each, so some are in flight at the kill), half don't (max_tokens 16). Two stock vLLM servers are
started (a: tier 0, b: tier 1), so this needs memory for two engines (~7 GB).

    .venv/bin/python -m loadtests.bench_router_failover [--rate 10] [--duration 20] [--kill-at 10] [--door serve]

``--door`` picks how clients reach the router: its own listener (default, ``router.listen``) or Serve's
ingress (HAProxy). ``run`` is the same measurement for ``ray-serve-cai bench`` (one kill per round, the
killed server restarted on its port between rounds), with a per-second timeline for the plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from launchers.local import free_port
from loadtests.client import Connection, split_url
from loadtests.output import write_result
from loadtests.processes import stop_on_sigterm
from loadtests.servers import start_router, start_vllm
from loadtests.stats import cdf_sample
from ray_serve_cai.bench.results import BenchOutput, BenchSettings, Row, TimelinePoint, headline


async def one(url: str, index: int, t0: float) -> dict:
    host, port, prefix = split_url(url)
    stream = index % 2 == 0
    body = json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": f"request {index}"}],
                       "max_tokens": 128 if stream else 16, "stream": stream, "temperature": 0}).encode()
    connection = Connection(host, port)
    started = time.perf_counter() - t0
    record = {"index": index, "stream": stream, "start": started}
    try:
        status, headers, data = await connection.post(prefix + "/v1/chat/completions", body)
        record.update(status=status, backend=headers.get("x-backend"), fallback_from=headers.get("x-fallback-from"))
        if stream:
            events = [line[6:] for line in data.decode().split("\n") if line.startswith("data: ")]
            record["complete"] = bool(events) and events[-1] == "[DONE]" and not any(e.startswith('{"error"') for e in events)
            record["resumed"] = b": resumed on" in data
        else:
            record["complete"] = status == 200 and b'"choices"' in data
    except Exception as exc:  # a client-visible failure
        record.update(status=None, error=type(exc).__name__, complete=False)
    finally:
        connection.close()
    record["end"] = time.perf_counter() - t0
    return record


async def open_loop(url: str, rate: float, duration: float, kill_at: float, kill) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    tasks, killed_at = [], None
    for index in range(int(rate * duration)):
        due = index / rate
        await asyncio.sleep(max(0.0, due - (time.perf_counter() - t0)))
        if killed_at is None and due >= kill_at:
            killed_at = time.perf_counter() - t0
            await asyncio.get_running_loop().run_in_executor(None, kill)
        tasks.append(asyncio.create_task(one(url, index, t0)))
    return list(await asyncio.gather(*tasks)), killed_at


def summarize(records: list[dict], killed_at: float) -> dict[str, Any]:
    errors = [r for r in records if r.get("status") != 200 or not r.get("complete")]
    after = sorted((r for r in records if r["start"] >= killed_at), key=lambda r: r["start"])
    in_flight = [r for r in records if r["start"] < killed_at < r["end"]]
    served_by_b = [r for r in records if r["end"] >= killed_at and r.get("backend") == "b" or r.get("resumed")]
    first_b = min((r["end"] for r in served_by_b), default=None)
    # from when on does every new request go straight to b (no failed attempt on a first)?
    settled = next((r["start"] for i, r in enumerate(after)
                    if all(x.get("backend") == "b" and not x.get("fallback_from") for x in after[i:])), None)
    return {
        "requests": len(records), "client_errors": len(errors), "killed_at_s": killed_at,
        "in_flight_at_kill": len(in_flight),
        "in_flight_rescued": sum(1 for r in in_flight if r.get("complete")),
        "first_answer_from_b_after_kill_s": None if first_b is None else first_b - killed_at,
        "traffic_moved_s": None if settled is None else max(0.0, settled - killed_at),
        "requests_after_kill_with_fallback": sum(1 for r in after if r.get("fallback_from")),
        "targets": {"client_errors": 0, "traffic_moved_s_le": 1.0},
    }


def timeline(records: list[dict]) -> list[TimelinePoint]:
    """Requests per second of start time, and how many of them failed."""
    seconds = int(max((r["start"] for r in records), default=0)) + 1
    points = [TimelinePoint(t=float(t), requests=0, errors=0) for t in range(seconds)]
    for r in records:
        point = points[int(r["start"])]
        point.requests += 1
        point.errors += int(r.get("status") != 200 or not r.get("complete"))
    return points


def measure(workdir: Path, rounds: int, rate: float, duration: float, kill_at: float, door: str = "listener"
            ) -> list[tuple[list[dict], float]]:
    """Two stock vLLM servers behind the router; each round SIGKILLs ``a`` mid-run (restarted between rounds)."""
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(start_vllm, workdir / f"vllm-{name}.log") for name in ("a", "b")]
        a, b = (f.result() for f in futures)
    a_port = int(a.url.rsplit(":", 1)[1])
    cluster = None
    runs = []
    try:
        backends = [{"name": "a", "kind": "openai", "url": a.url, "models": ["tiny-chat"], "tier": 0},
                    {"name": "b", "kind": "openai", "url": b.url, "models": ["tiny-chat"], "tier": 1}]
        listen_port = free_port() if door == "listener" else None
        cluster, url = start_router(backends, workdir, listen_port=listen_port, haproxy=door == "serve")
        if listen_port:
            url = f"http://127.0.0.1:{listen_port}"
        for index in range(rounds):
            if index:  # the killed server comes back on its port; the router's health check finds it again
                a = start_vllm(workdir / "vllm-a.log", port=a_port)
                time.sleep(10)
            asyncio.run(open_loop(url, rate, 3, 99, lambda: None))  # warm-up, no kill
            records, killed_at = asyncio.run(open_loop(url, rate, duration, kill_at, a.kill))
            runs.append((records, killed_at))
            summary = summarize(records, killed_at)
            print(f"round {index}: {summary['requests']} requests, {summary['client_errors']} client errors, "
                  f"traffic moved in {summary['traffic_moved_s']} s", flush=True)
    finally:
        if cluster:
            cluster.stop()
        a.kill()
        b.kill()
    return runs


def run(settings: BenchSettings) -> BenchOutput:
    rate, duration, kill_at = (10.0, 10.0, 5.0) if settings.tiny else (10.0, 20.0, 10.0)
    runs = measure(settings.workdir, settings.rounds, rate, duration, kill_at)
    rows = []
    for index, (records, killed_at) in enumerate(runs):
        summary = summarize(records, killed_at)
        latencies = [r["end"] - r["start"] for r in records if r.get("complete")]
        rows.append(Row(round=index, target="router, a killed", latencies_ms=cdf_sample(latencies), metrics={
            k: v for k, v in summary.items() if not isinstance(v, dict)}))
    first = runs[0]
    headlines = [headline("client errors per kill run", [r.metrics["client_errors"] for r in rows], at_most=0),
                 headline("traffic moved to b after the kill", [r.metrics["traffic_moved_s"] for r in rows], "s",
                          at_most=1.0),
                 headline("in-flight requests rescued", [r.metrics["in_flight_rescued"] for r in rows]),
                 headline("in flight at the kill", [r.metrics["in_flight_at_kill"] for r in rows])]
    return BenchOutput(rows=rows, headlines=headlines, timeline=timeline(first[0]), events={"kill": first[1]},
                       details={"rate": rate, "duration_s": duration, "kill_at_s": kill_at, "door": "listener"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--kill-at", type=float, default=10.0)
    parser.add_argument("--door", choices=("listener", "serve"), default="listener",
                        help="router listener (default) or Serve's ingress")
    args = parser.parse_args()
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    [(records, killed_at)] = measure(workdir, 1, args.rate, args.duration, args.kill_at, args.door)
    errors = [r for r in records if r.get("status") != 200 or not r.get("complete")]
    summary = summarize(records, killed_at)
    for key, value in summary.items():
        print(f"{key}: {value}")
    path = write_result("bench_router_p3", {"summary": summary, "records": records, "rate": args.rate,
                                            "duration_s": args.duration, "errors": errors[:20],
                                            "door": args.door,
                                            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
