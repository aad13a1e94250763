"""Streaming load on the lean client (``loadtests.client``): many concurrent streams, tokens from each
stream's usage, TTFT as the first body bytes."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loadtests.client import Connection, chat_body, completion_body, split_url
from loadtests.stats import cdf_sample, quantile_ms


async def lean_streams(url: str, concurrency: int, tokens: int, per_worker: int = 1,
                       headers: dict[str, str] | None = None, model: str = "tiny-chat", body: bytes | None = None,
                       path: str = "/v1/chat/completions") -> dict[str, Any]:
    """``concurrency`` workers on raw sockets, each running ``per_worker`` streams of ``tokens`` tokens in
    turn: generated tokens/s, requests/s, errors, TTFT median, p90, p95 and CDF (see ``StreamTally``).
    The request is a streamed chat (``chat_body``) unless ``body`` (and ``path``) say otherwise."""
    host, port, prefix = split_url(url)
    body = body or chat_body(tokens, stream=True, model=model)
    tally = StreamTally()

    async def worker() -> None:
        connection = Connection(host, port)
        try:
            for _ in range(per_worker):
                try:
                    status, _, data, ttft = await connection.post_timed(prefix + path, body, headers)
                except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                    tally.errors += 1
                    continue
                tally.add(status, data, ttft)
        finally:
            connection.close()

    return await timed_streams(worker, concurrency, tally)


async def completion_streams(url: str, concurrency: int, per_worker: int, max_tokens: int,
                             headers: dict[str, str] | None = None, model: str = "tiny-chat") -> dict[str, Any]:
    """``lean_streams`` of the engine benchmarks' streamed completion (``completion_body``)."""
    return await lean_streams(url, concurrency, max_tokens, per_worker, headers, model,
                              body=completion_body(max_tokens, model), path="/v1/completions")


_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')


class StreamTally:
    """What a run of chat streams delivered. Tokens come from each stream's usage chunk, not from
    counting content events: under load vLLM's server merges the tokens it has not sent yet into one
    event (up to a quarter fewer events than tokens at 64 streams here), so events per second
    understate the busier server. A stream counts only if it answered 200, ended with ``[DONE]`` and
    reported its usage."""

    def __init__(self) -> None:
        self.tokens = self.events = self.errors = 0
        self.ttfts: list[float] = []

    def add(self, status: int, data: bytes, ttft: float) -> None:
        found = _COMPLETION_TOKENS.findall(data)
        if status != 200 or not data.rstrip().endswith(b"data: [DONE]") or not found:
            self.errors += 1
            return
        self.tokens += int(found[-1])
        self.events += content_events(data)
        self.ttfts.append(ttft)


async def timed_streams(worker: Callable[[], Awaitable[None]], concurrency: int, tally: StreamTally) -> dict[str, Any]:
    """Run ``concurrency`` copies of ``worker`` (each adding its streams to ``tally``) and summarise."""
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ttfts = sorted(tally.ttfts)
    return {"tokens_per_s": tally.tokens / elapsed, "tokens": tally.tokens, "events": tally.events,
            "requests": len(ttfts) + tally.errors, "requests_per_s": len(ttfts) / elapsed,
            "errors": tally.errors, "elapsed_s": elapsed,
            "ttft_median_ms": statistics.median(ttfts) * 1000 if ttfts else None,
            "ttft_p90_ms": quantile_ms(ttfts, 0.9), "ttft_p95_ms": quantile_ms(ttfts, 0.95),
            "ttft_cdf_ms": cdf_sample(ttfts)}


def content_events(data: bytes) -> int:
    """SSE events of a chat stream that carry content (one or more tokens each)."""
    return sum(1 for line in data.split(b"\n")
               if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line)
