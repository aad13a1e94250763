"""A generic OpenAI app for engines that do not ship their own server, and ``send_error``."""

from __future__ import annotations

import json
from typing import Any

from serve_apps.asgi import ASGIApp, EngineResponse, Send, read_body, route_path, send_response
from serve_apps.engines.base import Engine
from serve_apps.openai_format import error_body


async def send_error(send: Send, status: int, message: str, *, param: str | None = None,
                     headers: list[tuple[str, str]] = ()) -> None:
    """Write a complete OpenAI-style JSON error response to an ASGI ``send``."""
    raw_headers = [(b"content-type", b"application/json")] + [(k.encode(), v.encode()) for k, v in headers]
    await send_response(send, status, raw_headers, error_body(status, message, param=param))


async def _send_engine_response(send: Send, response: EngineResponse) -> None:
    headers = [(k.encode(), v.encode()) for k, v in response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    try:
        async for chunk in response.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        await response.aclose()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def build_openai_app(engine: Engine) -> ASGIApp:
    """A minimal OpenAI API over the ``Engine`` protocol: chat, completions, models."""

    routes = {"/v1/chat/completions": engine.chat, "/v1/completions": engine.completion}

    async def app(scope: dict[str, Any], receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = route_path(scope), scope["method"]
        if path == "/v1/models" and method == "GET":
            body = json.dumps(await engine.models()).encode()
            response = EngineResponse.complete(200, "application/json", body)
            return await _send_engine_response(send, response)
        handler = routes.get(path)
        if handler is None:
            return await send_error(send, 404, f"no route for {method} {path}")
        if method != "POST":
            return await send_error(send, 405, f"{path} accepts POST only")
        try:
            request = json.loads(await read_body(receive))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return await send_error(send, 400, f"request body is not valid JSON: {exc}")
        if not isinstance(request, dict):
            return await send_error(send, 400, "request body must be a JSON object")
        if request.get("model") not in (None, *engine.config.served_names):
            return await send_error(send, 404, f"The model `{request['model']}` does not exist.", param="model")
        required = "messages" if path.endswith("chat/completions") else "prompt"
        if required not in request:
            return await send_error(send, 400, f"missing required field '{required}'", param=required)
        await _send_engine_response(send, await handler(request))

    return app
