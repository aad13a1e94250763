"""The batch routes and the methods each answers: one table for the batch API, the ``/v1/batch``
endpoint and a router without batch, whose API document still lists the routes (404 on them, as
documented, and 405 with ``Allow`` for a method they never answer)."""

from __future__ import annotations

from serve_apps.asgi import Receive, Reply, Scope
from serve_apps.openai_format import error_reply, method_not_allowed
from serve_apps.router.keys import ApiKey


def methods(path: str) -> tuple[str, ...]:
    """The methods a batch path answers; none: it is not a batch route."""
    match path.strip("/").split("/"):
        case ["v1", "batch"] | ["v1", "batches", _, "cancel"]:
            return ("POST",)
        case ["v1", "files" | "batches"]:
            return ("GET", "POST")
        case ["v1", "files", _]:
            return ("GET", "DELETE")
        case ["v1", "files", _, "content"] | ["v1", "batches", _]:
            return ("GET",)
    return ()


def refusal(method: str, path: str) -> Reply | None:
    """404 for a path that is no batch route, 405 (with ``Allow``) for a method it does not answer."""
    allowed = methods(path)
    if not allowed:
        return error_reply(404, f"no route {method} {path}", "invalid_request_error")
    return None if method in allowed else method_not_allowed(method, path, allowed)


async def without_batch(method: str, path: str, scope: Scope, receive: Receive, key: ApiKey) -> Reply | None:
    """The route hook of a router whose app has batch off: the batch routes answer 404 (405 for a
    method they never answer); every other path is not theirs."""
    if not methods(path):
        return None
    return refusal(method, path) or error_reply(404, f"batch is not enabled on this router: no route {path}",
                                                "invalid_request_error")
