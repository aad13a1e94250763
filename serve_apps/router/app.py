"""The ``MultiBackendRouter`` Serve deployment and ``build_router_app``, the builder ``serve build``
points at (``serve_apps.router.app:build_router_app``).

The deployment is an ingress with a bare ASGI app (``__serve_build_asgi_app__``): no FastAPI on the hot
path, and it runs unchanged under Serve's throughput-optimized mode and HAProxy direct ingress.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve import Application

from serve_apps.asgi import Reply
from serve_apps.batch.config import BatchConfig
from serve_apps.batch.routes import without_batch
from serve_apps.batch.sender import Call
from serve_apps.batch.service import BatchService
from serve_apps.checks import parse_router_args
from serve_apps.config import EngineConfig
from serve_apps.heap import freeze_startup_heap
from serve_apps.listener import Listener, start_listener
from serve_apps.logflush import start_log_flusher
from serve_apps.router.asgi import RouterASGI
from serve_apps.router.backends import Backend, create_backend
from serve_apps.router.backends.inprocess import InProcessBackend
from serve_apps.router.config import BackendConfig, BackendModel, ListenAddress, RouterConfig
from serve_apps.router.metrics import RouterMetrics
from serve_apps.router.router import Router


@serve.deployment(name="MultiBackendRouter", max_ongoing_requests=1024)
@serve.ingress()
class MultiBackendRouter:
    async def __init__(self, config: dict[str, Any], engines: dict[str, Any] | None = None,
                       listen: dict[str, Any] | None = None, batch: dict[str, Any] | None = None,
                       companions: list[Any] | None = None, local_engines: list[dict[str, Any]] | None = None) -> None:
        start_log_flusher()  # Serve buffers this replica's log (serve_apps/logflush.py)
        parsed = RouterConfig.model_validate(config)
        handles = engines or {}
        # router.colocate: the engines live in this replica (they start loading now, in the background)
        self.local_engines: dict[str, Any] = {}
        if local_engines:
            from serve_apps.replica import LocalEngine  # engine code only where an engine runs

            self.local_engines = {c["name"]: LocalEngine(c) for c in local_engines}
        metrics = RouterMetrics()
        backends = [self._backend(b, handles, metrics) for b in parsed.backends]
        self.router = Router(parsed, backends, metrics)
        self.router.start()
        self.batch: BatchService | None = None
        batch_config = BatchConfig.model_validate(batch or {})
        if batch_config.enabled:
            app_name = serve.get_replica_context().app_name
            self.batch = BatchService(batch_config, self.router, app_name, "MultiBackendRouter")
            self.batch.start()
        # one app, two doors: Serve's ingress and the listener
        self.asgi = RouterASGI(self.router, self.batch if self.batch is not None else without_batch)
        self.listener: Listener | None = None
        self.companions = companions or []  # deployments of this app that call the router by handle
        if listen is not None:
            address = ListenAddress.model_validate(listen)
            self.listener = await start_listener(self.asgi, address.host, address.port, cancel_on_disconnect=True,
                                                 limits=address)
        freeze_startup_heap()  # a colocated engine freezes again once it is up

    def _backend(self, backend: BackendConfig, handles: dict[str, Any], metrics: RouterMetrics) -> Backend:
        if backend.kind != "serve":
            return create_backend(backend)
        if backend.app:  # an engine deployed as its own Serve app
            handle = serve.get_deployment_handle(backend.deployment, app_name=backend.app)
            return create_backend(backend, handle, metrics)
        if backend.engine in self.local_engines:
            return InProcessBackend(backend, self.local_engines[backend.engine])
        return create_backend(backend, handles[backend.engine], metrics)

    async def __serve_build_asgi_app__(self) -> RouterASGI:
        return self.asgi

    # ---------------------------------------------------------------- for other deployments (by handle)

    async def generate_stream(self, path: str, raw: bytes, backend: str | None = None,
                              key: str | None = None) -> AsyncIterator[Any]:
        """``Router.generate_as`` (acting for the key called ``key``) over a streaming handle: see
        ``reply_frames``."""
        async for frame in reply_frames(await self.router.generate_as(path, raw, backend, key)):
            yield frame

    async def backends_status(self) -> dict[str, Any]:
        return self.router.backends()

    async def model_list(self, key: str | None = None) -> dict[str, Any]:
        """The models the key called ``key`` may use."""
        return self.router.models_as(key)

    async def batch_calls(self, requests: list[Call]) -> AsyncIterator[list[tuple[int, int, bytes]]]:
        """A group of a batch job's requests (job actors call this through a streaming deployment handle):
        lists of ``(index, status, body)`` as they finish (``BatchService.calls``)."""
        if self.batch is None:
            raise RuntimeError("batch is disabled on this router")
        async for result in self.batch.calls(requests):
            yield result

    async def check_health(self) -> None:
        for engine in self.local_engines.values():
            await engine.check_health()  # a failed engine fails the replica: Serve replaces it
        if self.listener is not None and not self.listener.serving:
            raise RuntimeError(f"router listener on port {self.listener.port} stopped serving")

    async def __del__(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        if self.batch is not None:
            await self.batch.aclose()
        await self.router.aclose()
        for engine in self.local_engines.values():
            await engine.aclose()


async def reply_frames(reply: Reply) -> AsyncIterator[Any]:
    """A reply as a streaming handle carries it: first ``{"status", "headers"}``, then body bytes."""
    yield {"status": reply.status, "headers": [(k.decode(), v.decode()) for k, v in reply.headers]}
    if isinstance(reply.body, bytes):
        yield reply.body
        return
    try:
        async for chunk in reply.body:
            yield chunk
    finally:
        await reply.body.aclose()  # type: ignore[attr-defined]


def build_router_app(args: dict[str, Any]) -> Application:
    """Router ingress + one engine replica deployment per entry of ``engines``."""
    parsed = parse_router_args(args)
    engine_apps: dict[str, Application] = {}
    options = parsed.router
    if parsed.engines and not options.colocate:
        from serve_apps.replica import engine_deployment  # imported only when engines are configured

        engine_apps = {engine.name: engine_deployment(engine, ingress=False) for engine in parsed.engines}
    by_name = {engine.name: engine for engine in parsed.engines}
    for backend in parsed.backends:
        if backend.kind == "serve" and not backend.models and backend.engine in by_name:
            engine = by_name[backend.engine]
            backend.models = [BackendModel(name=engine.name, aliases=list(engine.aliases))]
    config = RouterConfig.model_validate(
        parsed.model_dump(mode="json", exclude={"engines", "router", "batch", "matrix"})
    ).model_dump(mode="json")
    companions = []
    if parsed.matrix is not None:
        try:
            from serve_apps.matrix.deployment import MatrixInferenceBot
        except ImportError as exc:
            raise ValueError(f"the matrix section needs matrix-nio: pip install 'ray-serve-cai[matrix]' ({exc})") from None
        companions.append(MatrixInferenceBot.options(
            num_replicas=parsed.matrix.num_replicas, ray_actor_options={"num_cpus": parsed.matrix.num_cpus},
        ).bind(parsed.matrix.model_dump(mode="json")))
    local_engines = [engine.model_dump(mode="json") for engine in parsed.engines] if options.colocate else []
    return MultiBackendRouter.options(
        num_replicas=options.num_replicas,
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options=_actor_options(options.num_cpus, parsed.engines if options.colocate else []),
        logging_config={"enable_access_log": options.access_log},
    ).bind(config, engines=engine_apps, listen=options.listen.model_dump() if options.listen else None,
           batch=parsed.batch.model_dump(), companions=companions, local_engines=local_engines)


def _actor_options(router_cpus: float, local_engines: list[EngineConfig]) -> dict[str, Any]:
    """A colocated router replica reserves its engines' CPUs and GPUs as well as its own."""
    options: dict[str, Any] = {"num_cpus": router_cpus + sum(e.num_cpus for e in local_engines)}
    gpus = sum(e.tensor_parallel_size for e in local_engines if e.device == "gpu")
    if gpus:
        options["num_gpus"] = gpus
    return options
