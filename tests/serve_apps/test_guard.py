"""``RequireToken``: the engine worker's own port answers only holders of the replica's token."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_apps.asgi import call_asgi
from serve_apps.guard import RequireToken


async def _ok(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"engine"})


def _call(method: str, path: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    async def run() -> tuple[int, bytes]:
        response = await call_asgi(RequireToken(_ok, "s3cret"), method, path, headers, b"{}" if method == "POST" else b"")
        return response.status, await response.read()

    return asyncio.run(run())


@pytest.mark.parametrize("authorization", ["Bearer s3cret", "bearer s3cret", "Bearer  s3cret "])
def test_the_token_opens_the_port(authorization: str):
    assert _call("POST", "/v1/chat/completions", [("authorization", authorization)]) == (200, b"engine")


@pytest.mark.parametrize("headers", [[], [("authorization", "Bearer s3cre")], [("authorization", "Bearer s3cret2")],
                                     [("authorization", "Basic s3cret")], [("x-api-key", "s3cret")]])
def test_anything_else_is_an_openai_style_401_that_does_not_echo_the_token(headers):
    status, body = _call("POST", "/v1/chat/completions", headers)
    assert status == 401
    error = json.loads(body)["error"]
    assert error["type"] == "authentication_error" and b"s3cret" not in body


def test_health_stays_open_for_probes():
    assert _call("GET", "/health", []) == (200, b"engine")
