"""The router's HTTP face in process: readiness on /health, the OpenAPI document on every door,
/metrics, /v1/models of backends configured without models, and where it is as strict as vLLM's own
server (JSON content type, 405 with ``Allow``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from serve_apps.asgi import call_asgi
from serve_apps.batch.routes import without_batch
from serve_apps.router import openapi
from serve_apps.router.asgi import RouterASGI
from serve_apps.router.config import RouterConfig
from serve_apps.router.router import Router
from tests.serve_apps.router.scripted import PROMPT_TOKENS, ScriptedBackend, Step
from tests.serve_apps.router.test_router_scripted import body, make_router

JSON = ("content-type", "application/json")


async def request(app: RouterASGI, method: str, path: str, headers: tuple[tuple[str, str], ...] = (),
                  payload: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    response = await call_asgi(app, method, path, headers, payload)
    return response.status, dict(response.headers), await response.read()


async def get(app: RouterASGI, path: str) -> tuple[int, dict[str, str], bytes]:
    return await request(app, "GET", path)


def samples(text: bytes) -> dict[tuple[str, frozenset], float]:
    """A Prometheus text exposition as ``{(sample name, labels): value}``."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


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
    """Regenerate from vLLM's protocol models (imports vLLM, ~15 s): fails when openapi.json drifts.
    In a fresh interpreter, as the generator runs: pydantic names a few schemas used in both
    directions (``ComparisonFilter`` vs ``ComparisonFilter-Output``) by what was imported before."""
    code = "import sys; from serve_apps.router import openapi; sys.stdout.write(openapi.render(openapi.build_document()))"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    assert openapi.DOCUMENT_PATH.read_text() == fresh, (
        "serve_apps/router/openapi.json is stale: run `python -m serve_apps.router.openapi`")


def test_metrics_are_the_routers_series_in_prometheus_text_behind_the_key(monkeypatch):
    monkeypatch.setenv("ROUTER_TEST_KEYS", "secret-key")
    router, _ = make_router([Step()], [Step()], auth={"api_keys": {"env": "ROUTER_TEST_KEYS"}})
    app = RouterASGI(router)
    key = ("authorization", "Bearer secret-key")

    async def run() -> None:
        status, _, _ = await request(app, "POST", "/v1/chat/completions", (JSON, key), body())
        assert status == 200
        status, _, answer = await get(app, "/metrics")
        assert status == 401 and json.loads(answer)["error"]["code"] == "invalid_api_key"
        status, headers, text = await request(app, "GET", "/metrics", (key,))
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        series = samples(text)
        # named and labelled as Ray's export names them, so the dashboard and the alerts read either
        assert series[("ray_backend_request_count_total", frozenset({("backend", "b0"), ("status", "200")}))] == 1
        assert series[("ray_backend_request_latency_seconds_count", frozenset({("backend", "b0")}))] == 1
        tokens = {dict(labels)["key"]: value for (name, labels), value in series.items()
                  if name == "ray_router_prompt_tokens_total"}
        assert list(tokens.values()) == [PROMPT_TOKENS]
        assert not [name for name, _ in series if name.endswith("_created")]  # Ray's export has none
        router.start()  # every backend's gauges exist from the start
        try:
            series = samples((await request(app, "GET", "/metrics", (key,)))[2])
            assert series[("ray_backend_breaker_state", frozenset({("backend", "b1")}))] == 0
        finally:
            await router.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("path,allowed", [
    ("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/v1/models", "GET"), ("/v1/backends", "GET"),
    ("/metrics", "GET"), ("/health", "GET, HEAD"), ("/openapi.json", "GET, HEAD"), ("/docs", "GET, HEAD"),
])
def test_a_method_a_route_does_not_answer_is_a_405_naming_those_it_does(path, allowed):
    router, _ = make_router([Step()])
    for method in ("TRACE", "PUT"):
        status, headers, answer = asyncio.run(request(RouterASGI(router), method, path))
        assert status == 405 and headers["allow"] == allowed, (method, path, headers)
        assert json.loads(answer)["error"]["message"] == f"{method} not allowed on {path}"


def test_without_batch_the_documented_batch_routes_are_404_and_405_for_a_method_they_never_answer():
    router, _ = make_router([Step()])
    app = RouterASGI(router, without_batch)
    for method, path, status, allowed in [("TRACE", "/v1/files", 405, "GET, POST"), ("GET", "/v1/files", 404, None),
                                          ("GET", "/v1/batch", 405, "POST"), ("POST", "/v1/batch", 404, None),
                                          ("PUT", "/v1/batches/b1/cancel", 405, "POST"), ("GET", "/v1/nothing", 404, None)]:
        got, headers, answer = asyncio.run(request(app, method, path))
        assert (got, headers.get("allow")) == (status, allowed), (method, path)
        assert json.loads(answer)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonl"])
def test_a_generation_not_sent_as_json_is_a_400_as_on_vllm(content_type):
    router, backends = make_router([Step()])
    headers = () if content_type is None else (("content-type", content_type),)
    status, _, answer = asyncio.run(request(RouterASGI(router), "POST", "/v1/chat/completions", headers, body()))
    assert status == 400
    assert json.loads(answer)["error"]["message"] == "Unsupported Media Type: Only 'application/json' is allowed"
    assert backends[0].requests == []


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_with_parameters_or_in_capitals_is_json(content_type):
    router, _ = make_router([Step()])
    status, _, answer = asyncio.run(request(RouterASGI(router), "POST", "/v1/completions",
                                            (("content-type", content_type),), body()))
    assert status == 200, answer


def test_models_lists_what_backends_configured_without_models_report():
    config = RouterConfig.model_validate({"backends": [
        {"name": "pinned", "kind": "openai", "url": "http://pinned.invalid", "models": ["m"]},
        {"name": "ha1", "kind": "openai", "url": "http://ha1.invalid"},
        {"name": "ha2", "kind": "openai", "url": "http://ha2.invalid"}]})
    reports = {"pinned": ("ignored",), "ha1": ("x", "y"), "ha2": ("y",)}
    router = Router(config, [ScriptedBackend(c, reports=reports[c.name]) for c in config.backends])
    app = RouterASGI(router)

    async def run() -> None:
        before = json.loads((await get(app, "/v1/models"))[2])["data"]
        assert [card["id"] for card in before] == ["m"]  # the others have reported nothing yet
        router.start()
        try:
            while not router.ready:  # ready = every backend probed and, if it passed, asked for its models
                await asyncio.sleep(0.01)
            listing = json.loads((await get(app, "/v1/models"))[2])
        finally:
            await router.aclose()
        assert {card["id"]: card["backends"] for card in listing["data"]} == {"m": ["pinned"], "x": ["ha1"],
                                                                              "y": ["ha1", "ha2"]}
        assert {card["object"] for card in listing["data"]} == {"model"}

    asyncio.run(run())
