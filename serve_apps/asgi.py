"""Call an ASGI app in-process and get an ``EngineResponse`` back.

Why: the replica serves the engine's own OpenAI app over HTTP (fast path), and DeploymentHandle
callers (the router) and ``Engine.chat`` need the very same app and bytes without a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from serve_apps.engines.base import ASGIApp, EngineResponse

_DONE = object()


async def call_asgi(
    app: ASGIApp,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> EngineResponse:
    """Run one HTTP request through ``app``. The body streams; closing it cancels the request."""
    path, _, query = path.partition("?")
    header_list = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if body and not any(k == b"content-length" for k, _ in header_list):
        header_list.append((b"content-length", str(len(body)).encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": header_list,
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "state": {},
    }
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    disconnected = asyncio.Event()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await outbox.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        except BaseException as exc:  # surfaced to the reader below
            await outbox.put(exc)
        finally:
            await outbox.put(_DONE)

    task = asyncio.create_task(run())
    start = await outbox.get()
    if isinstance(start, BaseException):
        raise start
    if start is _DONE or start.get("type") != "http.response.start":
        task.cancel()
        raise RuntimeError("ASGI app finished without starting a response")

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                message = await outbox.get()
                if message is _DONE:
                    return
                if isinstance(message, BaseException):
                    raise message
                if message.get("type") == "http.response.body":
                    if message.get("body"):
                        yield message["body"]
                    if not message.get("more_body", False):
                        return
        finally:
            disconnected.set()
            if not task.done():
                task.cancel()

    response_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
    return EngineResponse(status=start["status"], headers=response_headers, body=chunks())
