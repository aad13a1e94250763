"""The one seam between the router and every kind of backend: the protocol, nothing else.

Like httpx's ``AsyncBaseTransport``, a backend has one method that matters: ``send()`` takes a request
and returns a ``BackendResponse`` -- a status, headers and an async byte stream that the caller must
``aclose()`` in ``try/finally``. The body is always what an OpenAI server would send over HTTP (JSON, or
SSE ``data: ...`` events for streams), so fallback, timeouts, resume and cancellation in the router never
depend on which kind of backend answered. Translating kinds (Ollama, Anthropic) translate inside their
own module (helpers in ``translate.py``); pass-through kinds hand bytes on untouched. HTTP plumbing
lives in ``http.py`` and ``wire.py``; backend kinds import those and this module, never each other.

Transport failures are raised as ``BackendUnavailable`` -- from ``send()`` before the head, or from the
stream after it -- and are the only exceptions the router treats as "try another backend".
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from serve_apps.router.config import BackendConfig, BackendModel

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
RESPONSES_PATH = "/v1/responses"  # OpenAI's Responses API
EMBEDDINGS_PATH = "/v1/embeddings"
MESSAGES_PATH = "/v1/messages"  # Anthropic's Messages API (vLLM serves it too)
# Every generation route the router relays; each backend kind says which of them it serves (``paths``).
GENERATION_ROUTES = frozenset({CHAT_PATH, COMPLETIONS_PATH, RESPONSES_PATH, EMBEDDINGS_PATH, MESSAGES_PATH})

# Why a backend gave no usable answer; also the ``reason`` label of the router's error metric.
#   connect: never reached it; timeout: no head / no data in time; disconnect: the connection or stream
#   broke; protocol: it answered something that is not its protocol; unsupported: the request cannot be
#   expressed for this backend (not the backend's fault: no breaker charge); starting: it has not come up
#   yet (engine replicas loading; no breaker charge, the client gets 503 + Retry-After at once);
#   deadline: a non-streaming answer took longer than ``timeouts.response`` (slow, not broken: no breaker
#   charge; the next backend is tried, and the client gets 504 when none finished in time).
Reason = Literal["connect", "timeout", "disconnect", "protocol", "unsupported", "starting", "deadline"]
UNSUPPORTED: Reason = "unsupported"
STARTING: Reason = "starting"
DEADLINE: Reason = "deadline"


class BackendUnavailable(Exception):
    """The backend could not give a usable answer (see ``Reason``)."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: Reason = reason


@dataclass(slots=True)
class BackendRequest:
    """An OpenAI API request on its way to a backend.

    ``body`` is the JSON body to send as-is; ``payload`` is the same body parsed (the router parses once;
    translating backends read ``payload``, pass-through backends send ``body``).
    """

    method: str
    path: str
    body: bytes = b""
    payload: dict[str, Any] | None = None
    stream: bool = False


class ByteStream(ABC):
    """An async iterator of body chunks with ``aclose()``; base for every backend's stream."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        # One iterator per stream: the router peeks the first chunk, then relays the rest, and a
        # translating stream keeps state between chunks.
        iterator = self.__dict__.get("_iterator")
        if iterator is None:
            iterator = self.__dict__["_iterator"] = self._iterate()
        return iterator

    @abstractmethod
    def _iterate(self) -> AsyncIterator[bytes]:
        """The body chunks (an async generator in every subclass)."""

    async def aclose(self) -> None:
        return None

    async def aread(self) -> bytes:
        try:
            return b"".join([chunk async for chunk in self])
        finally:
            await self.aclose()


class BytesStream(ByteStream):
    """A body already in memory (errors, translated non-streaming answers)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def _iterate(self) -> AsyncIterator[bytes]:
        if self._data:
            yield self._data


class IdleStream(ByteStream):
    """A body read chunk by chunk from a transport, at most ``idle`` seconds apart: the one place
    where a stalled or broken transport becomes ``BackendUnavailable``."""

    def __init__(self, idle: float) -> None:
        self._idle = idle

    @abstractmethod
    async def _read(self) -> bytes | None:
        """The next chunk (may be empty), or None at the end; raise ``TimeoutError`` after ``idle``."""

    @abstractmethod
    def _broken(self, exc: Exception) -> str | None:
        """A short detail if ``exc`` means the transport broke; None if it is a bug (re-raised)."""

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await self._read()
            except TimeoutError:
                raise BackendUnavailable("timeout", "no data within idle timeout") from None
            except Exception as exc:
                detail = self._broken(exc)
                if detail is None:
                    raise
                raise BackendUnavailable("disconnect", detail) from None
            if chunk is None:
                return
            if chunk:
                yield chunk


class IteratorStream(IdleStream):
    """The chunks of an async iterator, at most ``idle`` seconds apart (a handle's streaming call, an
    in-process ASGI body). Subclasses say which exceptions mean a broken transport."""

    def __init__(self, iterator: AsyncIterator[bytes], idle: float) -> None:
        super().__init__(idle)
        self._source = iterator

    async def _read(self) -> bytes | None:
        try:
            async with asyncio.timeout(self._idle):
                return await self._source.__anext__()
        except StopAsyncIteration:
            return None

    def _broken(self, exc: Exception) -> str | None:
        return None

    async def aclose(self) -> None:
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass(slots=True)
class BackendResponse:
    """A backend's answer. Why not ``EngineResponse``: the router must be able to close a body it never
    reads (a failed attempt's stream, a cancelled client), which ``ByteStream.aclose`` guarantees for
    every transport; and headers arrive already filtered of hop-by-hop ones."""

    status: int
    headers: list[tuple[str, str]]
    stream: ByteStream = field(default_factory=lambda: BytesStream(b""))

    async def aread(self) -> bytes:
        return await self.stream.aread()

    async def aclose(self) -> None:
        await self.stream.aclose()


class Backend(ABC):
    """One configured backend. Subclasses set ``can_resume`` and ``paths`` and implement ``send``."""

    kind: str = ""
    can_resume: bool = False  # can continue a final assistant message (mid-stream resume target)
    paths: frozenset[str] = frozenset({CHAT_PATH, COMPLETIONS_PATH})

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name
        self.discovered_models: tuple[str, ...] = ()  # what the backend said it serves (``refresh_models``)
        if config.resume_on_failure is not None:
            self.can_resume = self.can_resume and config.resume_on_failure

    @abstractmethod
    async def send(self, request: BackendRequest) -> BackendResponse:
        """Send ``request``; return once the response head is known. Raise ``BackendUnavailable``."""

    @abstractmethod
    async def check_health(self) -> bool:
        """One background health probe (bounded by ``config.health.timeout`` by the caller)."""

    async def refresh_models(self) -> None:
        """After each passing health probe: learn what the backend serves (``discovered_models``) where
        its config names nothing. Kinds that cannot ask keep the default: nothing to learn."""
        return None

    @property
    def listed_models(self) -> list[BackendModel]:
        """What ``/v1/models`` lists for this backend: its configured models, else the ones it reported."""
        return self.config.model_entries or [BackendModel(name=name) for name in self.discovered_models]

    def describe(self) -> dict[str, object]:
        """Kind-specific facts for ``/v1/backends``."""
        return {}

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:  # never shows credentials
        return f"<{type(self).__name__} {self.name!r}>"
