"""``kind: serve`` with the engine in the router's own process (``router.colocate``).

The router calls the engine's guarded OpenAI app as an ASGI app in process, the shape of httpx's
``ASGITransport``: no socket, no second HTTP parse, no second process relaying every streamed event.
Why: on a single node the engine and the router share the same cores, and every hop between them
costs CPU the engine needs (``loadtests/bench_frontdoor.py``; figures in docs/router.md). The body
is exactly what the engine's HTTP port would send, so fallback, resume and metrics are unchanged.
"""

from __future__ import annotations

from typing import Protocol

from serve_apps.asgi import ASGIApp, call_asgi
from serve_apps.router.backends.base import (
    GENERATION_ROUTES,
    STARTING,
    Backend,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
    IteratorStream,
)
from serve_apps.router.config import BackendConfig

FORWARD_HEADERS = [("content-type", "application/json")]


class InProcessEngine(Protocol):
    """What the backend needs of an engine living in this process (``serve_apps.replica.LocalEngine``)."""

    guard: ASGIApp

    @property
    def ready(self) -> bool: ...


class InProcessBackend(Backend):
    kind = "serve"
    can_resume = True  # vLLM honours continue_final_message
    paths = GENERATION_ROUTES

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
                               IteratorStream(response.body, self.config.timeouts.idle))

    async def check_health(self) -> bool:
        response = await call_asgi(self._engine.guard, "GET", self._health_path)
        await response.aclose()
        return response.status == 200
