"""vLLM engine: ``AsyncLLM`` in the replica's process, served by vLLM's own OpenAI app.

Why vLLM's own app rather than our own routes: it is the exact wire format users compare against
(SSE chunks, usage in streams, logprobs, errors), and it was the fastest path behind Serve in
``loadtests/bench_engine.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from argparse import Namespace
from typing import Any

from serve_apps.asgi import call_asgi
from serve_apps.config import EngineConfig
from serve_apps.engines.base import ASGIApp, EngineResponse

logger = logging.getLogger("ray.serve")


def build_vllm_args(config: EngineConfig, model_path: str) -> Namespace:
    """The API server's argument namespace for ``config``; unknown ``engine_kwargs`` keys fail here."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    argv = ["--model", model_path, "--served-model-name", *config.served_names,
            "--tensor-parallel-size", str(config.tensor_parallel_size)]
    if config.engine_dtype() != "auto":
        argv += ["--dtype", config.engine_dtype()]
    if config.max_model_len:
        argv += ["--max-model-len", str(config.max_model_len)]
    if config.enforce_eager:
        argv.append("--enforce-eager")
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    unknown = sorted(key for key in config.engine_kwargs if not hasattr(args, key))
    if unknown:
        raise ValueError(f"engine_kwargs: unknown vLLM argument(s): {', '.join(unknown)}")
    for key, value in config.engine_kwargs.items():
        setattr(args, key, value)
    validate_parsed_serve_args(args)
    return args


def apply_cpu_environment(config: EngineConfig) -> None:
    """vLLM's CPU backend sizes its KV cache from the environment; set it unless the user did."""
    if config.device == "cpu":
        space = config.kv_cache_gb
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(space) if space == int(space) else space))


class VLLMEngine:
    """An ``Engine`` backed by vLLM's ``AsyncLLM`` and OpenAI serving layer."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._engine: Any = None
        self._app: Any = None

    async def start(self) -> None:
        # Importing vLLM and constructing the engine block for tens of seconds (imports, the engine
        # core's start-up handshake, the KV cache): in a thread, so the event loop they would block
        # keeps answering -- a router sharing the replica (router.colocate) says 503 + Retry-After
        # while the engine loads instead of going silent.
        args, self._engine = await asyncio.to_thread(self._construct)
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app

        tasks = await self._engine.get_supported_tasks()
        app = build_app(args, tasks, self._engine.model_config)
        await init_app_state(self._engine, app.state, args, tasks)
        self._app = app
        await self._warm_up()

    def _construct(self) -> tuple[Namespace, Any]:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        apply_cpu_environment(self.config)
        args = build_vllm_args(self.config, self.config.resolve_model_path())
        engine_args = AsyncEngineArgs.from_cli_args(args)
        context = UsageContext.OPENAI_API_SERVER
        vllm_config = engine_args.create_engine_config(usage_context=context)
        engine = AsyncLLM.from_vllm_config(
            vllm_config=vllm_config,
            usage_context=context,
            enable_log_requests=engine_args.enable_log_requests,
            disable_log_stats=engine_args.disable_log_stats,
        )
        return args, engine

    async def _warm_up(self) -> None:
        """One real generation: ``/v1/models`` can answer before the engine can generate."""
        response = await self.completion({"model": self.config.name, "prompt": "hi", "max_tokens": 1})
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"warm-up generation failed ({response.status}): {body[:500]!r}")

    def asgi_app(self) -> ASGIApp | None:
        return self._app

    async def _post(self, path: str, request: dict[str, Any]) -> EngineResponse:
        if self._app is None:
            raise RuntimeError("engine not started")
        body = json.dumps(request).encode()
        return await call_asgi(self._app, "POST", path, [("content-type", "application/json")], body)

    async def chat(self, request: dict[str, Any]) -> EngineResponse:
        return await self._post("/v1/chat/completions", request)

    async def completion(self, request: dict[str, Any]) -> EngineResponse:
        return await self._post("/v1/completions", request)

    async def models(self) -> dict[str, Any]:
        response = await call_asgi(self._app, "GET", "/v1/models")
        return json.loads(await response.read())

    async def health(self) -> bool:
        if self._engine is None or self._engine.errored:
            return False
        try:
            await self._engine.check_health()
        except Exception:  # an unhealthy engine raises; the replica reports it
            return False
        return True

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
        self._app = None
