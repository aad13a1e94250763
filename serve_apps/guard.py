"""ASGI guard in front of an engine's app: readiness, body limit, health, and no stack traces.

Why a guard rather than FastAPI middleware: it wraps any engine's app (vLLM's own, or the generic
one) at the cost of one function call per request, and answers before the engine exists.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from serve_apps.asgi import ASGIApp, Receive, Send, lifespan, route_path
from serve_apps.openai_api import send_error

logger = logging.getLogger("ray.serve")
RETRY_AFTER_S = 5


class EngineState:
    """Where an engine is in its life: starting -> ready | failed. Shared by guard and replica."""

    def __init__(self) -> None:
        self.phase = "starting"
        self.error: str | None = None
        self.app: ASGIApp | None = None

    @property
    def ready(self) -> bool:
        return self.phase == "ready"


class EngineGuard:
    def __init__(self, state: EngineState, *, max_body_bytes: int,
                 healthy: Callable[[], Any]) -> None:
        self.state = state
        self.max_body_bytes = max_body_bytes
        self.healthy = healthy

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        if scope["type"] != "http":
            return
        if route_path(scope) == "/health":
            return await self._health(send)
        if not self.state.ready:
            return await self._unavailable(send)
        if self._declared_length(scope) > self.max_body_bytes:
            return await self._too_large(send)
        receive = self._limit(receive, send)
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.state.app(scope, receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._too_large(send)
        except Exception:
            logger.exception("engine app failed on %s", scope.get("path"))
            if not started:
                await send_error(send, 500, "internal error in the engine; see the replica logs")

    async def _health(self, send: Send) -> None:
        if self.state.ready and await self.healthy():
            body = b'{"status":"ok"}'
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self._unavailable(send)

    async def _unavailable(self, send: Send) -> None:
        if self.state.phase == "failed":
            message = f"engine failed to start: {self.state.error}"
        elif self.state.phase == "starting":
            message = "engine is starting; retry shortly"
        else:
            message = "engine is unhealthy"
        await send_error(send, 503, message, headers=[("retry-after", str(RETRY_AFTER_S))])

    async def _too_large(self, send: Send) -> None:
        await send_error(send, 413, f"request body exceeds the limit of {self.max_body_bytes} bytes")

    @staticmethod
    def _declared_length(scope: dict[str, Any]) -> int:
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return 0
        return 0

    def _limit(self, receive: Receive, send: Send) -> Receive:
        """Count bytes of bodies without a content-length (chunked uploads)."""
        seen = 0
        limit = self.max_body_bytes

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge()
            return message

        return limited


class _BodyTooLarge(Exception):
    pass


class RequireToken:
    """In front of an engine worker's own port, which listens on the node's address: only callers that
    hold the replica's secret (the router, which gets it through the deployment handle) may use it.
    ``/health`` stays open, so node-level probes and operators can still see that the port is alive."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = b"bearer " + token.encode()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) != "/health" and not self._authorized(scope):
            await send_error(send, 401, "this port is the router's: send the replica's token as "
                                        "`Authorization: Bearer <token>`")
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                scheme, _, token = value.partition(b" ")
                return hmac.compare_digest(scheme.lower() + b" " + token.strip(), self._expected)
        return False
