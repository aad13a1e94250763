"""The lean load client: one keep-alive HTTP/1.1 connection per worker on raw sockets, so a benchmark
measures the server rather than its own client's pool; and the request bodies the benchmarks send."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any


class Connection:
    """One keep-alive connection; ``post`` returns (status, headers, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        status, response_headers, data, _ = await self.post_timed(path, body, headers)
        return status, response_headers, data

    async def post_timed(self, path: str, body: bytes, headers: dict[str, str] | None = None
                         ) -> tuple[int, dict[str, str], bytes, float]:
        """Like ``post``, plus the time from sending to the first body bytes (TTFT for streams)."""
        sent = time.perf_counter()
        first = None
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n{extra}\r\n").encode()
        self.writer.write(head + body)
        try:
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionError("closed")
            status = int(status_line.split()[1])
            response_headers: dict[str, str] = {}
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b""):
                    break
                key, _, value = line.decode().partition(":")
                response_headers[key.strip().lower()] = value.strip()
            if "content-length" in response_headers:
                data = await self.reader.readexactly(int(response_headers["content-length"]))
                first = time.perf_counter()
            else:  # chunked
                parts = []
                while True:
                    size = int((await self.reader.readline()).strip(), 16)
                    if size == 0:
                        await self.reader.readline()
                        break
                    parts.append(await self.reader.readexactly(size))
                    first = first or time.perf_counter()
                    await self.reader.readline()
                data = b"".join(parts)
        except Exception:
            self.close()
            raise
        if response_headers.get("connection") == "close":
            self.close()
        return status, response_headers, data, (first or time.perf_counter()) - sent

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def split_url(url: str) -> tuple[str, int, str]:
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    return host, int(port or 80), "/" + path if path else ""


async def chat_ok(connection: Connection, prefix: str, body: bytes, headers: dict[str, str] | None) -> bool:
    """One chat request on ``connection``; True on a 200 (any transport failure counts as an error)."""
    try:
        status, _, _ = await connection.post(prefix + "/v1/chat/completions", body, headers)
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
        return False
    return status == 200


def chat_body(max_tokens: int, stream: bool, model: str = "tiny-chat") -> bytes:
    """The chat request every streaming benchmark sends (a stream runs to max_tokens: ignore_eos)."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "tell me a story"}],
                            "max_tokens": max_tokens, "temperature": 0}
    if stream:  # usage says how many tokens came: events do not (see ``StreamTally``)
        body.update(stream=True, ignore_eos=True, stream_options={"include_usage": True})
    return json.dumps(body).encode()


def bench_body(max_tokens: int = 1) -> bytes:
    """The non-streaming chat request of the request-rate benchmarks (max_tokens 1: the path, not the engine)."""
    return json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "hello there"}],
                       "max_tokens": max_tokens, "temperature": 0}).encode()


def completion_body(max_tokens: int, model: str = "tiny-chat") -> bytes:
    """The streamed completion the engine benchmarks send (``bench_engine``, ``bench_scaling``): runs to
    ``max_tokens`` (ignore_eos), usage in its last event."""
    return json.dumps({"model": model, "prompt": "def main():", "max_tokens": max_tokens, "ignore_eos": True,
                       "temperature": 0.8, "stream": True, "stream_options": {"include_usage": True}}).encode()

