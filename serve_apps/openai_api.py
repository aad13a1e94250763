"""OpenAI-style errors, and a generic OpenAI app for engines that do not ship their own server."""

from __future__ import annotations

import json
from typing import Any

from serve_apps.engines.base import ASGIApp, Engine, EngineResponse, Send

# HTTP status -> OpenAI error "type", as the OpenAI API and vLLM name them.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "timeout",
}


def error_body(status: int, message: str, *, param: str | None = None, code: str | int | None = None,
               type: str | None = None) -> bytes:
    error = {"message": message, "type": type or ERROR_TYPES.get(status, "api_error"), "param": param,
             "code": code if code is not None else status}
    return json.dumps({"error": error}).encode()


async def send_error(send: Send, status: int, message: str, *, param: str | None = None,
                     headers: list[tuple[str, str]] = ()) -> None:
    """Write a complete OpenAI-style JSON error response to an ASGI ``send``."""
    body = error_body(status, message, param=param)
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def route_path(scope: dict[str, Any]) -> str:
    """The path below the app's mount point (Serve sets ``root_path`` to the route prefix)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


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
            request = json.loads(await _read_body(receive))
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
