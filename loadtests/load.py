"""Non-streaming load on the lean client: closed loops at a concurrency, and interleaved c=1 requests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loadtests.client import Connection, chat_ok, split_url
from loadtests.stats import latency_summary


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
            ok = await chat_ok(connection, prefix, body, headers)
            sent += 1
            done = time.perf_counter()
            if now >= measure_from:
                if ok:
                    latencies.append(done - now)
                else:
                    errors += 1
        connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {**latency_summary(latencies, errors), "rps": len(latencies) / duration, "sent": sent}


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
            ok = await chat_ok(connection, prefix, body, headers)
            if now >= start + warmup:
                if ok:
                    latencies[name].append(time.perf_counter() - sent)
                else:
                    errors[name] += 1
    for connection, _, _ in connections.values():
        connection.close()
    return {name: latency_summary(values, errors[name]) for name, values in latencies.items()}
