"""`up`'s readiness check against a router whose only backend speaks Anthropic (no /v1/completions):
the real router core on a real listener, in front of the fake Anthropic server process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from ray_serve_cai.commands.local import _wait_until_generates
from serve_apps.listener import start_listener
from serve_apps.router.asgi import RouterASGI
from serve_apps.router.backends import create_backend
from serve_apps.router.config import RouterConfig
from serve_apps.router.router import Router
from tests.serve_apps.router.conftest import ANTHROPIC_KEY, FakeBackend


@pytest.fixture
def anthropic_only_router(tmp_path) -> Iterator[str]:
    fake = FakeBackend("anthropic").start()
    key = tmp_path / "anthropic"
    key.write_text(ANTHROPIC_KEY + "\n")
    config = RouterConfig.model_validate({"backends": [{
        "name": "claude", "kind": "anthropic", "url": fake.url, "models": [{"name": "claude-tiny"}],
        "api_key": {"file": str(key)}}]})
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    async def serve() -> None:
        router = Router(config, [create_backend(b, None) for b in config.backends])
        router.start()
        holder["listener"] = await start_listener(RouterASGI(router), "127.0.0.1", 0)
        holder["router"] = router
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(30)
    started.wait(30)
    try:
        yield f"http://127.0.0.1:{holder['listener'].port}"
    finally:
        async def stop() -> None:
            await holder["listener"].close()
            await holder["router"].aclose()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        fake.kill()


def test_ready_when_only_chat_is_served(anthropic_only_router):
    lines: list[str] = []
    started = time.monotonic()
    _wait_until_generates(anthropic_only_router, time.monotonic() + 30, lines.append)
    assert time.monotonic() - started < 15, lines
