"""The Engine protocol: what a replica needs from an inference engine, and nothing about routing.

An engine answers OpenAI requests given as parsed JSON bodies and returns an ``EngineResponse``: a
status, headers and an async stream of body bytes (SSE lines for streams, JSON otherwise), exactly as
the engine's own HTTP server would send them. That lets a replica, a DeploymentHandle caller and the
HTTP path all carry the same bytes without re-serialising them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from serve_apps.asgi import ASGIApp, EngineResponse, Receive, Scope, Send
from serve_apps.config import EngineConfig

__all__ = ["ASGIApp", "Engine", "EngineResponse", "Receive", "Scope", "Send"]


@runtime_checkable
class Engine(Protocol):
    """An inference engine behind an OpenAI API.

    Engines are constructed with their ``EngineConfig`` and must not do heavy work in ``__init__``:
    ``start()`` loads the model, so a replica can answer 503 while it runs.
    """

    config: EngineConfig

    async def start(self) -> None:
        """Load the model. Returns once a real generation has succeeded."""

    async def chat(self, request: dict[str, Any]) -> EngineResponse:
        """``POST /v1/chat/completions`` with a parsed body."""

    async def completion(self, request: dict[str, Any]) -> EngineResponse:
        """``POST /v1/completions`` with a parsed body."""

    async def models(self) -> dict[str, Any]:
        """The ``/v1/models`` listing."""

    async def health(self) -> bool:
        """True while the engine can generate."""

    async def shutdown(self) -> None:
        """Release the engine's processes and memory."""

    def asgi_app(self) -> ASGIApp | None:
        """The engine's own OpenAI server as an ASGI app, if it has one (the fast path).

        Return None to be served by the generic OpenAI app built on the methods above.
        """
