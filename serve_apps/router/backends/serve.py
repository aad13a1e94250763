"""``kind: serve`` -- an engine replica of the same Serve app, reached through its DeploymentHandle.

The replica's ``forward(method, path, headers, body)`` streams a head dict (``status``, ``headers``)
and then the body bytes exactly as vLLM's HTTP server would send them, so this backend is as much a
pass-through as ``openai``. Each streamed item costs one Ray object / gRPC message; an engine replica
deployed with its own route prefix can instead be used as a ``kind: openai`` backend over HTTP
(docs/router.md compares both).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from serve_apps.router.backends.base import Backend, BackendRequest, BackendResponse, BackendUnavailable, ByteStream
from serve_apps.router.config import BackendConfig

FORWARD_HEADERS = [("content-type", "application/json")]


def _is_transport_error(exc: BaseException) -> bool:
    """Ray errors (dead actor, unavailable replica, lost object) vs. bugs in our own code."""
    module = type(exc).__module__ or ""
    return module.startswith("ray") or isinstance(exc, (ConnectionError, OSError))


class HandleStream(ByteStream):
    def __init__(self, generator: Any, idle: float) -> None:
        self._generator = generator
        self._idle = idle

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self._idle):
                    item = await self._generator.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise BackendUnavailable("timeout", "no data within idle timeout") from None
            except Exception as exc:
                if not _is_transport_error(exc):
                    raise
                raise BackendUnavailable("disconnect", type(exc).__name__) from None
            if item:
                yield item

    async def aclose(self) -> None:
        self._generator.cancel()


class ServeBackend(Backend):
    kind = "serve"
    can_resume = True  # the replica runs vLLM, which honours continue_final_message

    def __init__(self, config: BackendConfig, handle: Any) -> None:
        super().__init__(config)
        if handle is None:
            raise ValueError(f"backend {config.name!r}: kind serve needs a DeploymentHandle")
        self._stream_handle = handle.options(stream=True)
        self._health_path = config.health.path or "/health"

    async def _open(self, method: str, path: str, body: bytes, wait: float) -> BackendResponse:
        generator = self._stream_handle.forward.remote(method, path, FORWARD_HEADERS, body)
        try:
            async with asyncio.timeout(wait):
                head = await generator.__anext__()
        except TimeoutError:
            generator.cancel()
            raise BackendUnavailable("timeout", "no response head within first_byte timeout") from None
        except StopAsyncIteration:
            raise BackendUnavailable("protocol", "replica sent no response head") from None
        except Exception as exc:
            generator.cancel()
            if not _is_transport_error(exc):
                raise
            raise BackendUnavailable("connect", type(exc).__name__) from None
        if not isinstance(head, dict) or "status" not in head:
            generator.cancel()
            raise BackendUnavailable("protocol", "first item is not a response head")
        headers = [(k.lower(), v) for k, v in head.get("headers", [])]
        return BackendResponse(int(head["status"]), headers, HandleStream(generator, self.config.timeouts.idle))

    async def send(self, request: BackendRequest) -> BackendResponse:
        return await self._open(request.method, request.path, request.body, self.config.timeouts.first_byte)

    async def check_health(self) -> bool:
        try:
            response = await self._open("GET", self._health_path, b"", self.config.health.timeout)
            await response.aread()
        except BackendUnavailable:
            return False
        return response.status == 200
