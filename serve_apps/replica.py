"""Engine replicas: one engine in a Serve replica, speaking the OpenAI API over HTTP and handles.

The replica's constructor returns at once and the engine loads in the background: until it can
generate, every request gets 503 with Retry-After and ``/health`` says so. A failed start makes the
Serve health check fail, so Serve replaces the replica.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.util import get_node_ip_address

from serve_apps.asgi import call_asgi
from serve_apps.config import EngineConfig
from serve_apps.engines.registry import get_registry
from serve_apps.guard import EngineGuard, EngineState, RequireToken
from serve_apps.heap import freeze_startup_heap
from serve_apps.listener import Listener, start_listener
from serve_apps.logflush import start_log_flusher
from serve_apps.openai_api import build_openai_app

logger = logging.getLogger("ray.serve")


class LocalEngine:
    """One engine in this process, loading in the background from construction on.

    ``guard`` is its ASGI app at every phase (503 + Retry-After until it can generate). Used by an
    engine replica, and by a router replica that runs its engine in process (``router.colocate``).
    """

    def __init__(self, config: dict[str, Any] | EngineConfig) -> None:
        self.config = config if isinstance(config, EngineConfig) else EngineConfig.model_validate(config)
        self.engine = get_registry().get(self.config.engine)(self.config)
        self.state = EngineState()
        self.guard = EngineGuard(self.state, max_body_bytes=self.config.max_request_bytes,
                                 healthy=self.engine.health)
        self._start_task = asyncio.get_running_loop().create_task(self._start())

    @property
    def ready(self) -> bool:
        return self.state.ready

    async def _start(self) -> None:
        try:
            await self.engine.start()
            self.state.app = self.engine.asgi_app() or build_openai_app(self.engine)
            freeze_startup_heap()
            self.state.phase = "ready"
            logger.info("engine %s ready (model %s)", self.config.engine, self.config.name)
        except Exception as exc:
            self.state.error = f"{type(exc).__name__}: {exc}"
            self.state.phase = "failed"
            logger.exception("engine %s failed to start", self.config.engine)

    async def check_health(self) -> None:
        """Raise if the engine failed to start or is unhealthy (a Serve health check fails on it)."""
        if self.state.phase == "failed":
            raise RuntimeError(f"engine failed to start: {self.state.error}")
        if self.state.ready and not await self.engine.health():
            raise RuntimeError("engine is unhealthy")

    async def aclose(self) -> None:
        self._start_task.cancel()
        await self.engine.shutdown()


class _EngineReplica:
    async def __init__(self, config: dict[str, Any]) -> None:
        start_log_flusher()  # Serve buffers this replica's log (serve_apps/logflush.py)
        self.local = LocalEngine(config)
        self.config, self.engine, self.state, self.guard = (
            self.local.config, self.local.engine, self.local.state, self.local.guard)
        self.listener: Listener | None = None

    async def __serve_build_asgi_app__(self):
        return self.guard

    async def check_health(self) -> None:
        await self.local.check_health()

    async def forward(self, method: str, path: str, headers: list[tuple[str, str]],
                      body: bytes) -> AsyncIterator[Any]:
        """Handle entry point: yields ``{"status", "headers"}`` then body bytes.

        Chunks already waiting are joined before each yield, so a fast stream costs fewer Ray
        objects without a timer delaying the first byte.
        """
        response = await call_asgi(self.guard, method, path, headers, body)
        yield {"status": response.status, "headers": response.headers}
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for chunk in response.body:
                    queue.put_nowait(chunk)
            finally:
                queue.put_nowait(None)

        pump_task = asyncio.ensure_future(pump())
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                parts = [item]
                while not queue.empty():
                    extra = queue.get_nowait()
                    if extra is None:
                        yield b"".join(parts)
                        return
                    parts.append(extra)
                yield b"".join(parts)
        finally:
            if not pump_task.done():
                pump_task.cancel()
            await response.aclose()

    async def endpoint(self) -> dict[str, str] | None:
        """``{"url": "http://node-ip:port", "token": ...}`` of this replica's own listener (engine
        workers), else None. The token travels only over the handle; the port refuses calls without it.
        Published only once the engine is ready: a replacement replica still loading its engine would
        otherwise look like the least loaded endpoint and answer the router's requests with 503."""
        if self.listener is None or not self.listener.serving or not self.state.ready:
            return None
        return {"url": f"http://{self.listener.host}:{self.listener.port}", "token": self._token}

    async def __del__(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        await self.local.aclose()


class _EngineWorker(_EngineReplica):
    """Handle-only replica that also serves its guarded OpenAI app on an ephemeral port of its node,
    so the router can stream over HTTP (one socket write per chunk) instead of one Ray object per
    chunk; ``endpoint`` tells the router where (docs/router.md, "serve kind transports")."""

    async def __init__(self, config: dict[str, Any]) -> None:
        await super().__init__(config)
        self._token = secrets.token_urlsafe(32)  # per replica, generated here, never logged
        try:
            self.listener = await start_listener(RequireToken(self.guard, self._token), get_node_ip_address(), 0)
        except OSError as exc:  # the handle path still works: degrade, don't fail the replica
            logger.warning("engine HTTP listener unavailable (%s); the router will use the handle", exc)


_DEPLOYMENT_DEFAULTS = {"max_ongoing_requests": 256, "health_check_period_s": 10, "health_check_timeout_s": 30}
# HTTP ingress: the replica serves the OpenAI API at its app's route prefix (engine-only apps).
EngineReplica = serve.deployment(**_DEPLOYMENT_DEFAULTS)(serve.ingress()(_EngineReplica))
# Handle-only: reached through ``forward`` from another deployment (behind the router). Serve allows
# one HTTP ingress per application, and the router is it.
EngineWorker = serve.deployment(**_DEPLOYMENT_DEFAULTS)(_EngineWorker)


def deployment_options(config: EngineConfig) -> dict[str, Any]:
    """Serve deployment options derived from an ``EngineConfig``."""
    actor: dict[str, Any] = {"num_cpus": config.num_cpus}
    if config.device == "gpu":
        actor["num_gpus"] = config.tensor_parallel_size
    options: dict[str, Any] = {
        "name": f"engine-{config.name}",
        "max_ongoing_requests": config.max_ongoing_requests,
        "ray_actor_options": actor,
        "logging_config": {"enable_access_log": config.access_log},
    }
    if config.autoscaling is not None:
        options["autoscaling_config"] = config.autoscaling.model_dump()
    else:
        options["num_replicas"] = config.num_replicas
    return options


def engine_deployment(config: EngineConfig, *, ingress: bool = True) -> serve.Application:
    """A bound engine deployment for ``config``.

    ``ingress=True``: deploy it as its own app (OpenAI API over HTTP, plus ``forward``).
    ``ingress=False``: pass it to another deployment's ``bind`` and call ``forward`` on the handle.
    """
    deployment = EngineReplica if ingress else EngineWorker
    return deployment.options(**deployment_options(config)).bind(config.model_dump(mode="json"))
