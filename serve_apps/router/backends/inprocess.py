"""``kind: serve`` with the engine in the router's own process (``router.colocate``).

The router calls the engine's guarded OpenAI app as an ASGI app in process, the shape of httpx's
``ASGITransport``: no socket, no second HTTP parse, no second process relaying every streamed event.
Why: on a single node the engine and the router share the same cores, and every hop between them
costs CPU the engine needs (``loadtests/bench_frontdoor.py``; figures in docs/router.md). The body
is exactly what the engine's HTTP port would send, so fallback, resume and metrics are unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from serve_apps.asgi import ASGIApp, call_asgi
from serve_apps.router.backends.base import (
    STARTING,
    Backend,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
    IdleStream,
)
from serve_apps.router.config import BackendConfig

FORWARD_HEADERS = [("content-type", "application/json")]


class InProcessEngine(Protocol):
    """What the backend needs of an engine living in this process (``serve_apps.replica.LocalEngine``)."""

    guard: ASGIApp

    @property
    def ready(self) -> bool: ...


class ASGIBodyStream(IdleStream):
    """Body chunks of an in-process ASGI response, at most ``idle`` seconds apart."""

    def __init__(self, body: AsyncIterator[bytes], idle: float) -> None:
        super().__init__(idle)
        self._body = body

    async def _read(self) -> bytes | None:
        try:
            async with asyncio.timeout(self._idle):
                return await self._body.__anext__()
        except StopAsyncIteration:
            return None

    def _broken(self, exc: Exception) -> str | None:
        return None  # the engine's own errors arrive as error events; anything else is a bug

    async def aclose(self) -> None:
        await self._body.aclose()  # type: ignore[attr-defined]  # cancels the request in the engine


class InProcessBackend(Backend):
    kind = "serve"
    can_resume = True  # vLLM honours continue_final_message

    def __init__(self, config: BackendConfig, engine: InProcessEngine) -> None:
        super().__init__(config)
        self._engine = engine
        self._health_path = config.health.path or "/health"

    def describe(self) -> dict[str, object]:
        return {"transport": "in-process"}

    async def send(self, request: BackendRequest) -> BackendResponse:
        if not self._engine.ready:
            raise BackendUnavailable(STARTING, "the engine in this replica is still starting")
        response = await call_asgi(self._engine.guard, request.method, request.path, FORWARD_HEADERS, request.body)
        return BackendResponse(response.status, response.headers,
                               ASGIBodyStream(response.body, self.config.timeouts.idle))

    async def check_health(self) -> bool:
        response = await call_asgi(self._engine.guard, "GET", self._health_path)
        await response.aclose()
        return response.status == 200
