"""Named API keys (``auth.keys``): config validation, lookup, rotation, allow-lists of models and
backends, all through the router's real ASGI face in process against scripted backends."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from serve_apps.asgi import call_asgi
from serve_apps.router.asgi import RouterASGI
from serve_apps.router.config import RouterConfig
from serve_apps.router.keys import KeyTable
from serve_apps.validation import format_validation_error
from tests.serve_apps.router.scripted import Step
from tests.serve_apps.router.test_router_scripted import make_router

SECRET_A, SECRET_B, SECRET_OLD = "sk-team-a-0123456789", "sk-team-b-9876543210", "sk-team-a-old-000"
BACKEND = {"name": "b0", "kind": "openai", "url": "http://b0.invalid"}


@pytest.fixture
def secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("TEAM_A_KEYS", f"{SECRET_A},{SECRET_OLD}")  # rotation: old and new key, one name
    (tmp_path / "team-b").write_text(SECRET_B + "\n")
    return tmp_path


def config_error(auth: dict, backends: list[dict] | None = None) -> str:
    with pytest.raises(ValidationError) as caught:
        RouterConfig.model_validate({"backends": backends or [BACKEND], "auth": auth})
    return format_validation_error(caught.value)


def test_config_errors_name_the_bad_key():
    assert "auth.keys.0.requests_per_minute" in config_error({"keys": [{"name": "a", "key": {"env": "X"}, "requests_per_minute": 0}]})
    assert "auth.keys.0.rpm: Extra inputs are not permitted" in config_error({"keys": [{"name": "a", "key": {"env": "X"}, "rpm": 5}]})
    assert "auth.keys.1.key" in config_error({"keys": [{"name": "a", "key": {"env": "X"}}, {"name": "b"}]})
    assert "duplicate key names: a" in config_error({"keys": [{"name": "a", "key": {"env": "X"}}, {"name": "a", "key": {"env": "Y"}}]})
    assert "keys.0.name: 'anonymous' is reserved" in config_error({"keys": [{"name": "anonymous", "key": {"env": "X"}}]})
    assert "'default' is reserved" in config_error({"api_keys": {"env": "K"}, "keys": [{"name": "default", "key": {"env": "X"}}]})
    assert "auth.keys.0.backends: unknown backend(s) nope" in config_error({"keys": [{"name": "a", "key": {"env": "X"}, "backends": ["nope"]}]})
    assert "auth.redis.url: Value error, must start with redis://" in config_error({"redis": {"url": "http://x"}})


def test_a_redis_password_inline_is_refused_without_echoing_it():
    message = config_error({"redis": {"url": "redis://user:hunter2secret@127.0.0.1:6379/0"}})
    assert "auth.redis.url" in message and "password" in message and "hunter2secret" not in message


def test_lookup_by_name_with_rotation_and_legacy_keys(secrets, monkeypatch):
    monkeypatch.setenv("LEGACY_KEYS", "sk-legacy-1")
    auth = RouterConfig.model_validate({"backends": [BACKEND], "auth": {
        "api_keys": {"env": "LEGACY_KEYS"},
        "keys": [{"name": "team-a", "key": {"env": "TEAM_A_KEYS"}, "requests_per_minute": 3},
                 {"name": "team-b", "key": {"file": str(secrets / "team-b")}, "models": ["m"]}]}}).auth
    table = KeyTable.load(auth.api_keys, auth.keys)
    assert table.lookup(f"Bearer {SECRET_A}".encode()).name == "team-a"
    assert table.lookup(f"bearer {SECRET_OLD} ".encode()).requests_per_minute == 3
    assert table.lookup(f"Bearer {SECRET_B}".encode()).models == frozenset({"m"})
    assert table.lookup(b"Bearer sk-legacy-1").name == "default"
    assert table.lookup(b"Bearer sk-team-a") is None and table.lookup(SECRET_A.encode()) is None and table.lookup(None) is None
    for shown in (repr(table), repr(auth), str(table.lookup(f"Bearer {SECRET_A}".encode()))):
        assert SECRET_A not in shown and SECRET_B not in shown and "sk-legacy-1" not in shown


def test_one_key_value_under_two_names_fails_without_showing_it(secrets, monkeypatch):
    monkeypatch.setenv("TEAM_B_ALSO", SECRET_B)
    auth = RouterConfig.model_validate({"backends": [BACKEND], "auth": {"keys": [
        {"name": "team-b", "key": {"file": str(secrets / "team-b")}}, {"name": "other", "key": {"env": "TEAM_B_ALSO"}}]}}).auth
    with pytest.raises(ValueError) as caught:
        KeyTable.load(auth.api_keys, auth.keys)
    assert "auth.keys.1 (other)" in str(caught.value) and "team-b" in str(caught.value) and SECRET_B not in str(caught.value)
    empty = RouterConfig.model_validate({"backends": [BACKEND], "auth": {"keys": [{"name": "x", "key": {"env": "UNSET_VAR_X"}}]}}).auth
    with pytest.raises(ValueError, match=r"auth.keys.0 \(x\) is configured but no key was found"):
        KeyTable.load(empty.api_keys, empty.keys)


def keyed_app(secrets, **key_options) -> tuple[RouterASGI, list]:
    router, backends = make_router([Step()] * 4, [Step()] * 4, auth={"keys": [
        {"name": "team-a", "key": {"env": "TEAM_A_KEYS"}, **key_options},
        {"name": "team-b", "key": {"file": str(secrets / "team-b")}}]})
    return RouterASGI(router), backends


async def post(app: RouterASGI, secret: str | None, payload: dict, path: str = "/v1/chat/completions",
               headers: tuple = ()) -> tuple[int, dict[str, str], dict]:
    auth = [("authorization", f"Bearer {secret}")] if secret else []
    response = await call_asgi(app, "POST", path, [("content-type", "application/json"), *auth, *headers],
                               json.dumps(payload).encode())
    return response.status, dict(response.headers), json.loads(await response.read())


def chat(model: str = "m", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_unknown_key_is_401_and_each_name_passes(secrets):
    app, backends = keyed_app(secrets)
    for secret, status in ((None, 401), ("sk-wrong", 401), (SECRET_A, 200), (SECRET_OLD, 200), (SECRET_B, 200)):
        got, _, body = asyncio.run(post(app, secret, chat()))
        assert got == status, (secret, body)
        if status == 401:
            assert body["error"]["code"] == "invalid_api_key"


def test_a_model_outside_the_keys_list_is_404_model_not_found(secrets):
    app, backends = keyed_app(secrets, models=["other-model"])
    status, _, body = asyncio.run(post(app, SECRET_A, chat("m")))
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert body["error"]["type"] == "invalid_request_error" and "team-a" in body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert all(b.requests == [] for b in backends)  # refused before any backend was asked
    assert asyncio.run(post(app, SECRET_B, chat("m")))[0] == 200  # another key is not restricted


def test_allowed_backends_steer_routing_and_an_explicit_forbidden_backend_is_403(secrets):
    app, backends = keyed_app(secrets, backends=["b1"])
    status, headers, _ = asyncio.run(post(app, SECRET_A, chat()))
    assert status == 200 and headers["x-backend"] == "b1"  # b0 (tier 0) is not this key's
    status, _, body = asyncio.run(post(app, SECRET_A, chat(backend="b0")))
    assert status == 403 and body["error"]["type"] == "permission_error" and "'b0'" in body["error"]["message"]
    status, _, body = asyncio.run(post(app, SECRET_A, chat(), headers=(("x-backend", "b0"),)))
    assert status == 403
    assert backends[0].requests == []
    assert asyncio.run(post(app, SECRET_B, chat(backend="b0")))[1]["x-backend"] == "b0"


def test_models_list_shows_only_what_the_key_may_use(secrets):
    router, _ = make_router([Step()], [Step()], auth={"keys": [
        {"name": "team-a", "key": {"env": "TEAM_A_KEYS"}, "backends": ["b1"]},
        {"name": "team-b", "key": {"file": str(secrets / "team-b")}, "models": ["nothing-here"]}]})
    app = RouterASGI(router)

    async def models(secret: str) -> dict:
        response = await call_asgi(app, "GET", "/v1/models", [("authorization", f"Bearer {secret}")])
        return json.loads(await response.read())

    assert [(m["id"], m["backends"]) for m in asyncio.run(models(SECRET_A))["data"]] == [("m", ["b1"])]
    assert asyncio.run(models(SECRET_B))["data"] == []
