"""A light streaming load client: one connection per concurrent worker, minimal parsing.

Why not one shared client: a shared pool caps itself well below what the server can do, so the
client would be measured instead of the server. Each worker keeps only the tail of a stream to read
the final ``usage``; TTFT is the arrival of the first body bytes.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass

import aiohttp

from loadtests.bench_router_lib import cdf_sample


@dataclass
class LoadResult:
    label: str
    requests: int
    errors: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_median_ms: float
    ttft_p90_ms: float
    ttft_p95_ms: float
    requests_per_s: float
    ttft_cdf_ms: list[float]

    def as_dict(self) -> dict:
        return asdict(self)


def _usage_tokens(tail: bytes) -> int:
    marker = tail.rfind(b'"usage"')
    if marker < 0:
        return 0
    start = tail.rfind(b"data: ", 0, marker)
    line = tail[start + 6:].split(b"\n", 1)[0]
    try:
        return int(json.loads(line)["usage"]["completion_tokens"])
    except (ValueError, KeyError, TypeError):
        return 0


async def run_load(label: str, base_url: str, model: str, *, concurrency: int = 64, per_worker: int = 2,
                   max_tokens: int = 64, path: str = "/v1/completions",
                   headers: dict[str, str] | None = None) -> LoadResult:
    body = {"model": model, "prompt": "def main():", "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0.8, "stream": True, "stream_options": {"include_usage": True}}
    payload = json.dumps(body).encode()
    request_headers = {"content-type": "application/json", **(headers or {})}
    ttfts: list[float] = []
    tokens = 0
    errors = 0

    async def worker() -> None:
        nonlocal tokens, errors
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
            for _ in range(per_worker):
                started = time.perf_counter()
                try:
                    async with session.post(base_url + path, data=payload, headers=request_headers) as response:
                        if response.status != 200:
                            errors += 1
                            await response.read()
                            continue
                        first = True
                        tail = b""
                        async for chunk in response.content.iter_any():
                            if first:
                                ttfts.append(time.perf_counter() - started)
                                first = False
                            tail = (tail + chunk)[-4096:]
                        tokens += _usage_tokens(tail)
                except aiohttp.ClientError:
                    errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ttfts.sort()
    done = concurrency * per_worker - errors
    return LoadResult(
        label=label, requests=concurrency * per_worker, errors=errors, completion_tokens=tokens, wall_s=wall,
        tokens_per_s=tokens / wall if wall else 0.0,
        ttft_median_ms=1000 * statistics.median(ttfts) if ttfts else float("nan"),
        ttft_p90_ms=1000 * ttfts[int(0.9 * (len(ttfts) - 1))] if ttfts else float("nan"),
        ttft_p95_ms=1000 * ttfts[int(0.95 * (len(ttfts) - 1))] if ttfts else float("nan"),
        requests_per_s=done / wall if wall else 0.0, ttft_cdf_ms=cdf_sample(ttfts),
    )
