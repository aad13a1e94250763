"""P3: kill the preferred backend (SIGKILL, a real stock vLLM server) during a steady 10 req/s run
through the router; count client-visible errors and measure how fast traffic moved to the fallback.

Half the requests stream (max_tokens 128, ~0.5 s each, so some are in flight at the kill), half don't (max_tokens 16). Two stock vLLM servers are
started (a: tier 0, b: tier 1), so this needs memory for two engines (~7 GB).

    .venv/bin/python loadtests/bench_router_failover.py [--rate 10] [--duration 20] [--kill-at 10] [--door serve]

``--door`` picks how clients reach the router: its own listener (default, ``router.listen``) or Serve's
ingress (HAProxy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_router_lib import Connection, free_port, split_url, start_router, start_vllm, stop_on_sigterm, write_result


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
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(start_vllm, workdir / f"vllm-{name}.log") for name in ("a", "b")]
        a, b = (f.result() for f in futures)
    cluster = None
    try:
        backends = [{"name": "a", "kind": "openai", "url": a.url, "models": ["tiny-chat"], "tier": 0},
                    {"name": "b", "kind": "openai", "url": b.url, "models": ["tiny-chat"], "tier": 1}]
        listen_port = free_port() if args.door == "listener" else None
        cluster, url = start_router(backends, workdir, listen_port=listen_port)
        if listen_port:
            url = f"http://127.0.0.1:{listen_port}"
        asyncio.run(open_loop(url, args.rate, 3, 99, lambda: None))  # warm-up, no kill
        records, killed_at = asyncio.run(open_loop(url, args.rate, args.duration, args.kill_at, a.kill))
    finally:
        if cluster:
            cluster.stop()
        a.kill()
        b.kill()
    errors = [r for r in records if r.get("status") != 200 or not r.get("complete")]
    after = sorted((r for r in records if r["start"] >= killed_at), key=lambda r: r["start"])
    in_flight = [r for r in records if r["start"] < killed_at < r["end"]]
    served_by_b = [r for r in records if r["end"] >= killed_at and r.get("backend") == "b" or r.get("resumed")]
    first_b = min((r["end"] for r in served_by_b), default=None)
    # from when on does every new request go straight to b (no failed attempt on a first)?
    settled = next((r["start"] for i, r in enumerate(after)
                    if all(x.get("backend") == "b" and not x.get("fallback_from") for x in after[i:])), None)
    summary = {
        "requests": len(records), "client_errors": len(errors), "killed_at_s": killed_at,
        "in_flight_at_kill": len(in_flight),
        "in_flight_rescued": sum(1 for r in in_flight if r.get("complete")),
        "first_answer_from_b_after_kill_s": None if first_b is None else first_b - killed_at,
        "traffic_moved_s": None if settled is None else max(0.0, settled - killed_at),
        "requests_after_kill_with_fallback": sum(1 for r in after if r.get("fallback_from")),
        "targets": {"client_errors": 0, "traffic_moved_s_le": 1.0},
    }
    for key, value in summary.items():
        print(f"{key}: {value}")
    path = write_result("bench_router_p3", {"summary": summary, "records": records, "rate": args.rate,
                                            "duration_s": args.duration, "errors": errors[:20],
                                            "door": args.door,
                                            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
