"""The OpenAI wire vocabulary shared by engines, replicas and the router: error bodies and SSE events.

One error builder for the whole package, so every 4xx/5xx a client sees has the same shape:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from serve_apps.asgi import JSON_HEADERS, Reply

# HTTP status -> OpenAI error "type", as the OpenAI API and vLLM name them.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "timeout",
}
SSE_DONE = b"data: [DONE]\n\n"


def error_payload(status: int, message: str, *, type: str | None = None, code: Any = None,
                  param: str | None = None) -> dict[str, Any]:
    """The error object; ``type`` defaults from the status, ``code`` to the status."""
    return {"error": {"message": message, "type": type or ERROR_TYPES.get(status, "api_error"), "param": param,
                      "code": code if code is not None else status}}


def error_body(status: int, message: str, *, type: str | None = None, code: Any = None,
               param: str | None = None) -> bytes:
    """``error_payload`` as a JSON body."""
    return json.dumps(error_payload(status, message, type=type, code=code, param=param)).encode()


def sse_event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def error_event(message: str, code: int = 502) -> bytes:
    """The end of a stream that failed after its first bytes: an error event, then ``[DONE]``."""
    return sse_event(error_payload(code, message, type="backend_error")) + SSE_DONE


def error_reply(status: int, message: str, type_: str, code: Any = None,
                headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    """``error_body`` as a complete ``Reply`` (JSON content type, plus ``headers``)."""
    return Reply(status, JSON_HEADERS + (headers or []), error_body(status, message, type=type_, code=code))


def method_not_allowed(method: str, path: str, allowed: Iterable[str]) -> Reply:
    """405 with the ``Allow`` header RFC 9110 requires (the methods ``path`` does answer)."""
    return error_reply(405, f"{method} not allowed on {path}", "invalid_request_error",
                       headers=[(b"allow", ", ".join(allowed).encode())])
