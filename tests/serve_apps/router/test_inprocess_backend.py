"""``router.colocate``: the engine in the router's own process, called as an ASGI app (no socket).

A real ``LocalEngine`` (the same class engine replicas run) around the echo engine, which waits for a
file before it is ready: the starting phase, readiness and answers through the router are all real.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from serve_apps.checks import ConfigError, parse_router_args
from serve_apps.replica import LocalEngine
from serve_apps.router.backends import BackendRequest, BackendUnavailable
from serve_apps.router.backends.inprocess import InProcessBackend
from serve_apps.router.config import RouterConfig
from serve_apps.router.router import Router

ECHO = "tests.serve_apps.echo_engine:EchoEngine"
CHAT = "/v1/chat/completions"


def chat(text: str) -> bytes:
    return json.dumps({"model": "echo", "messages": [{"role": "user", "content": text}]}).encode()


async def until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def test_backend_refuses_while_starting_then_answers_in_process(tmp_path: Path):
    async def scenario() -> None:
        ready_file = tmp_path / "ready"
        engine = LocalEngine({"name": "echo", "engine": ECHO, "engine_kwargs": {"ready_file": str(ready_file)}})
        config = RouterConfig.model_validate({"backends": [{"name": "local", "kind": "serve", "engine": "echo",
                                                            "models": [{"name": "echo"}]}]})
        backend = InProcessBackend(config.backends[0], engine)
        request = BackendRequest("POST", CHAT, chat("hello there"))
        with pytest.raises(BackendUnavailable) as refused:
            await backend.send(request)
        assert refused.value.reason == "starting"
        assert await backend.check_health() is False
        ready_file.touch()
        await until(lambda: engine.ready)
        assert await backend.check_health() is True
        response = await backend.send(request)
        assert response.status == 200
        answer = json.loads(await response.aread())
        assert answer["choices"][0]["message"]["content"] == "hello there"
        assert backend.describe() == {"transport": "in-process"}
        await engine.aclose()

    asyncio.run(scenario())


def test_router_over_a_colocated_engine_says_503_then_routes(tmp_path: Path):
    async def scenario() -> None:
        ready_file = tmp_path / "ready"
        engine = LocalEngine({"name": "echo", "engine": ECHO, "engine_kwargs": {"ready_file": str(ready_file)}})
        config = RouterConfig.model_validate({"backends": [{"name": "local", "kind": "serve", "engine": "echo",
                                                            "models": [{"name": "echo"}], "health": {"interval": 0.05}}]})
        router = Router(config, [InProcessBackend(config.backends[0], engine)])
        router.start()
        try:
            starting = await router.generate(CHAT, chat("hi"), None)
            assert starting.status == 503
            assert int(dict(starting.headers)[b"retry-after"]) >= 1
            ready_file.touch()
            await until(lambda: engine.ready)
            reply = await router.generate(CHAT, chat("hi"), None)
            assert reply.status == 200, reply.body
            body = reply.body if isinstance(reply.body, bytes) else b"".join([c async for c in reply.body])
            assert json.loads(body)["_backend"] == "local"
        finally:
            await router.aclose()
            await engine.aclose()

    asyncio.run(scenario())


def test_colocate_refuses_engine_replica_counts_naming_the_key():
    args = {"router": {"colocate": True},
            "engines": [{"name": "echo", "engine": ECHO, "num_replicas": 2}],
            "backends": [{"name": "local", "kind": "serve", "engine": "echo"}]}
    with pytest.raises(ConfigError, match=r"engines\.0: with router.colocate .* set router.num_replicas"):
        parse_router_args(args)
    args["engines"][0]["num_replicas"] = 1
    assert parse_router_args(args).router.colocate is True
