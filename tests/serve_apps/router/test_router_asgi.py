"""The router's HTTP face in process: readiness on /health, and the OpenAPI document on every door."""

from __future__ import annotations

import asyncio
import json

from openapi_spec_validator import validate

from serve_apps.asgi import call_asgi
from serve_apps.router import openapi
from serve_apps.router.asgi import RouterASGI
from tests.serve_apps.router.scripted import ScriptedBackend, Step
from tests.serve_apps.router.test_router_scripted import make_router


async def get(app: RouterASGI, path: str) -> tuple[int, dict[str, str], bytes]:
    response = await call_asgi(app, "GET", path)
    return response.status, dict(response.headers), await response.read()


class SlowProbe(ScriptedBackend):
    """Its first health probe takes a while, like an engine replica that is still loading."""

    async def check_health(self) -> bool:
        await asyncio.sleep(0.3)
        return True


def test_health_is_503_until_every_backend_had_its_first_probe():
    router, backends = make_router([Step()], [Step()])
    slow = SlowProbe(backends[1].config, [])
    router._monitor._backends[1] = slow  # same name, slower probe

    async def run() -> None:
        app = RouterASGI(router)
        router.start()
        try:
            status, headers, body = await get(app, "/health")
            assert status == 503 and headers["retry-after"] == "1" and json.loads(body) == {"status": "starting"}
            await asyncio.sleep(0.6)
            status, _, body = await get(app, "/health")
            assert status == 200 and json.loads(body) == {"status": "ok"}
        finally:
            await router.aclose()

    asyncio.run(run())


def test_openapi_document_is_served_without_a_key_and_is_valid_openapi_3_1(monkeypatch):
    monkeypatch.setenv("ROUTER_TEST_KEYS", "secret-key")
    router, _ = make_router([Step()], auth={"api_keys": {"env": "ROUTER_TEST_KEYS"}})
    app = RouterASGI(router)

    status, headers, body = asyncio.run(get(app, "/openapi.json"))
    assert status == 200 and headers["content-type"] == "application/json"
    document = json.loads(body)
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/backends", "/health", "/v1/batch",
            "/v1/files", "/v1/files/{file_id}/content", "/v1/batches", "/v1/batches/{batch_id}/cancel"} <= set(document["paths"])
    assert "purpose" in document["components"]["schemas"]["FileObject"]["properties"]
    chat = document["components"]["schemas"]["ChatCompletionRequest"]
    assert {"messages", "model", "stream", "backend"} <= set(chat["properties"])

    status, headers, page = asyncio.run(get(app, "/docs"))
    assert status == 200 and headers["content-type"].startswith("text/html") and b"openapi.json" in page
    status, _, _ = asyncio.run(get(app, "/v1/models"))
    assert status == 401  # the API itself still needs the key


def test_shipped_document_is_what_the_generator_writes():
    """Regenerate from vLLM's protocol models (imports vLLM, ~15 s): fails when openapi.json drifts."""
    assert openapi.DOCUMENT_PATH.read_text() == openapi.render(openapi.build_document()), (
        "serve_apps/router/openapi.json is stale: run `python -m serve_apps.router.openapi`")
