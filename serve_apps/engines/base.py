"""The Engine protocol: what a replica needs from an inference engine, and nothing about routing.

An engine answers OpenAI requests given as parsed JSON bodies and returns an ``EngineResponse``: a
status, headers and an async stream of body bytes (SSE lines for streams, JSON otherwise), exactly as
the engine's own HTTP server would send them. That lets a replica, a DeploymentHandle caller and the
HTTP path all carry the same bytes without re-serialising them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from serve_apps.config import EngineConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _single(payload: bytes) -> AsyncIterator[bytes]:
    yield payload


@dataclass
class EngineResponse:
    """A response as status, headers and body chunks. Close ``body`` if you stop reading early."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: AsyncIterator[bytes] = field(default_factory=_empty)

    async def read(self) -> bytes:
        """Collect the whole body (for non-streaming callers and tests)."""
        return b"".join([chunk async for chunk in self.body])

    @classmethod
    def complete(cls, status: int, content_type: str, payload: bytes) -> "EngineResponse":
        """A response whose whole body is already in hand (JSON, or a finished SSE stream)."""
        return cls(status, [("content-type", content_type)], _single(payload))

    async def aclose(self) -> None:
        aclose = getattr(self.body, "aclose", None)
        if aclose is not None:
            await aclose()


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
