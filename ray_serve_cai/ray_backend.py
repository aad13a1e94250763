"""``RayBackend``: the notebook-friendly face over the same Serve apps the serve configs deploy.

Each model becomes its own Serve application named after the model, at route prefix
``/<name>`` (or ``/`` if you pass ``route_prefix="/"``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from serve_apps.apps import parse_engine_config
from serve_apps.replica import engine_deployment


class RayBackend:
    """Start and stop models on a Ray cluster (local, CML, KubeRay) from Python."""

    def __init__(self, *, http_host: str = "127.0.0.1", http_port: int = 8000) -> None:
        self.http_host = http_host
        self.http_port = http_port
        self._apps: dict[str, str] = {}

    async def initialize_ray(self, address: str | None = None, **init_kwargs: Any) -> None:
        """Connect to ``address`` (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``) or start a
        local Ray on this machine when None."""
        import ray
        from ray import serve

        def _init() -> None:
            if not ray.is_initialized():
                kwargs = {"ignore_reinit_error": True, **init_kwargs}
                if address is None:
                    kwargs.setdefault("include_dashboard", False)
                    ray.init(**kwargs)
                else:
                    ray.init(address=address, **kwargs)
            serve.start(http_options={"host": self.http_host, "port": self.http_port})

        await asyncio.to_thread(_init)

    async def start_model(self, config: dict[str, Any] | None = None, engine: str | None = None, *,
                          vllm_config: dict[str, Any] | None = None, route_prefix: str | None = None) -> str:
        """Deploy a model (``EngineConfig`` fields) and return its base URL.

        ``vllm_config=`` is the original spelling of ``config``. Returns once the Serve app is running;
        ``GET <url>/health`` answers 200 once the engine can generate.
        """
        from ray import serve

        args = dict(config or vllm_config or {})
        if engine is not None:
            args["engine"] = engine
        engine_config = parse_engine_config(args)
        prefix = route_prefix or f"/{engine_config.name}"
        app = engine_deployment(engine_config)
        await asyncio.to_thread(serve.run, app, name=engine_config.name, route_prefix=prefix)
        self._apps[engine_config.name] = prefix
        return f"http://{self.http_host}:{self.http_port}{prefix.rstrip('/')}"

    async def stop_model(self, name: str) -> None:
        from ray import serve

        await asyncio.to_thread(serve.delete, name)
        self._apps.pop(name, None)

    async def status(self) -> dict[str, Any]:
        """Serve's status of every application: ``{name: {"status", "route_prefix", "deployments"}}``."""
        from ray import serve

        status = await asyncio.to_thread(serve.status)
        return {
            name: {
                "status": getattr(app.status, "value", str(app.status)),
                "route_prefix": self._apps.get(name),
                "deployments": {d: getattr(info.status, "value", str(info.status)) for d, info in app.deployments.items()},
            }
            for name, app in status.applications.items()
        }
