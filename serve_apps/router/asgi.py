"""The router's HTTP face: a bare ASGI callable (no framework on the hot path).

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /v1/backends``, ``GET /health``. Optional Bearer keys guard every ``/v1/`` route; errors are
OpenAI-style JSON with the right status, never a stack trace.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from serve_apps.router.backends.base import CHAT_PATH, COMPLETIONS_PATH
from serve_apps.router.router import JSON_HEADERS, Reply, Router, error_reply

logger = logging.getLogger("ray.serve")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
GENERATE_PATHS = frozenset({CHAT_PATH, COMPLETIONS_PATH})


class BodyTooLarge(Exception):
    pass


class RouterASGI:
    def __init__(self, router: Router) -> None:
        self.router = router
        self._keys = [key.encode() for key in router.api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            reply = await self._dispatch(scope, receive)
        except Exception:  # last line of defence: log it, answer OpenAI-style
            logger.exception("router error")
            reply = error_reply(500, "internal router error", "internal_error")
        await _send(reply, send)

    async def _dispatch(self, scope: Scope, receive: Receive) -> Reply:
        path: str = scope["path"]
        root = scope.get("root_path") or ""
        if root and root != "/" and path.startswith(root):
            path = path[len(root):] or "/"
        method: str = scope["method"]
        if path == "/health":
            return Reply(200, JSON_HEADERS, b'{"status":"ok"}')
        headers = dict(scope["headers"])
        if self._keys and not self._authorized(headers.get(b"authorization")):
            return error_reply(401, "Incorrect or missing API key. Send it as `Authorization: Bearer <key>`.",
                               "invalid_request_error", "invalid_api_key")
        if path in GENERATE_PATHS:
            if method != "POST":
                return error_reply(405, f"{method} not allowed on {path}", "invalid_request_error")
            try:
                body = await _read_body(receive, self.router.config.max_request_bytes)
            except BodyTooLarge:
                return error_reply(413, "request body too large", "invalid_request_error")
            header_backend = headers.get(b"x-backend")
            return await self.router.generate(path, body, header_backend.decode() if header_backend else None)
        if path in ("/v1/models", "/v1/backends"):
            if method != "GET":
                return error_reply(405, f"{method} not allowed on {path}", "invalid_request_error")
            payload = self.router.models() if path == "/v1/models" else self.router.backends()
            return Reply(200, JSON_HEADERS, json.dumps(payload).encode())
        return error_reply(404, f"no route {path}", "invalid_request_error")

    def _authorized(self, header: bytes | None) -> bool:
        if not header or not header[:7].lower() == b"bearer ":
            return False
        token = header[7:].strip()
        # compare against every key, without an early exit, so timing says nothing
        return any([hmac.compare_digest(token, key) for key in self._keys])


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(reply: Reply, send: Send) -> None:
    if isinstance(reply.body, bytes):
        headers = reply.headers + [(b"content-length", str(len(reply.body)).encode())]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})
        return
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    stream = reply.body
    try:
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
