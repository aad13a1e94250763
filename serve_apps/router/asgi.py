"""The router's HTTP face: a bare ASGI callable (no framework on the hot path).

Routes: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/responses``, ``/v1/embeddings`` and
``/v1/messages`` (relayed to the backends that serve each), ``GET /v1/models``,
``GET /v1/backends``, ``GET /metrics`` (this replica's Prometheus series, see ``metrics.py``), ``GET /health``
(liveness: 503 only until every backend had its first probe), ``GET /ready`` (readiness: 200 while every
configured model has a backend that can generate), the batch routes when configured, ``GET /openapi.json``
and ``GET /docs`` (the API description, see ``openapi.py``). Optional Bearer keys guard every ``/v1/`` route
and ``/metrics``; errors are OpenAI-style JSON with the right status, never a stack trace. As strict as
vLLM's own server where the document says so: a generation body must be sent as ``application/json``, and
a method a route does not answer is a 405 naming the ones it does (``Allow``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from serve_apps.asgi import (
    JSON_HEADERS,
    BodyTooLarge,
    Receive,
    Reply,
    Scope,
    Send,
    lifespan,
    read_body,
    route_path,
    send_response,
)
from serve_apps.openai_format import error_reply, method_not_allowed
from serve_apps.router import openapi
from serve_apps.router.backends.base import GENERATION_ROUTES
from serve_apps.router.keys import ANONYMOUS_KEY, ApiKey
from serve_apps.router.metrics import CONTENT_TYPE
from serve_apps.router.router import Router

logger = logging.getLogger("ray.serve")
# Extra routes (batch): (method, path, scope, receive, the caller's key) -> a reply, or None when the
# path is not theirs. The key is resolved here, once, and acted for by everything the route does.
RouteHook = Callable[[str, str, Scope, Receive, ApiKey], Awaitable["Reply | None"]]
# The API description is public (as on vLLM's own server): no key needed to read it.
DOCUMENT_PATHS = frozenset({"/openapi.json", "/docs"})
READ_PATHS = frozenset({"/v1/models", "/v1/backends", "/metrics"})
GET, READ, POST = ("GET",), ("GET", "HEAD"), ("POST",)
JSON_ONLY = "Unsupported Media Type: Only 'application/json' is allowed"  # vLLM's own words
RETRY_SOON = JSON_HEADERS + [(b"retry-after", b"1")]  # a probe's 503: not yet, ask again in a second
ROUTER_MADE = [(b"x-backend", b"router")]  # on errors the router answers itself (documented in openapi.py)


class RouterASGI:
    def __init__(self, router: Router, hook: RouteHook | None = None) -> None:
        self.router = router
        self.hook = hook
        self._keys = router.keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            reply = await self._dispatch(scope, receive)
        except Exception:  # last line of defence: log it, answer OpenAI-style
            logger.exception("router error")
            reply = error_reply(500, "internal router error", "internal_error")
        headers = reply.headers
        if reply.status >= 400 and not any(name == b"x-backend" for name, _ in headers):
            headers = headers + ROUTER_MADE  # no backend was asked: the router says so itself
        await send_response(send, reply.status, headers, reply.body)

    def _ready(self, method: str) -> Reply:
        """200 only while every configured model has a backend that can generate (a load balancer's or
        Kubernetes' readiness probe); which models wait, for operators, unless keys guard the app."""
        if method not in READ:
            return method_not_allowed(method, "/ready", READ)
        readiness = self.router.readiness()
        payload = readiness.payload()
        if self._keys.enabled:
            payload = {"status": payload["status"]}
        body = json.dumps(payload).encode()
        return Reply(200, JSON_HEADERS, body) if readiness.ready else Reply(503, RETRY_SOON, body)

    async def _dispatch(self, scope: Scope, receive: Receive) -> Reply:
        path = route_path(scope)
        method: str = scope["method"]
        if path == "/health":
            if method not in READ:
                return method_not_allowed(method, path, READ)
            if not self.router.ready:  # first health round still running (at most one probe timeout)
                return Reply(503, RETRY_SOON, b'{"status":"starting"}')
            return Reply(200, JSON_HEADERS, b'{"status":"ok"}')
        if path == "/ready":
            return self._ready(method)
        if path in DOCUMENT_PATHS:
            return _document(path, method)
        headers = dict(scope["headers"])
        key = ANONYMOUS_KEY
        if self._keys.enabled:
            found = self._keys.lookup(headers.get(b"authorization"))
            if found is None:
                return error_reply(401, "Incorrect or missing API key. Send it as `Authorization: Bearer <key>`.",
                                   "invalid_request_error", "invalid_api_key")
            key = found
        if path in GENERATION_ROUTES:
            if method != "POST":
                return method_not_allowed(method, path, POST)
            if not _is_json(headers.get(b"content-type")):
                return error_reply(400, JSON_ONLY, "invalid_request_error")
            try:
                body = await read_body(receive, self.router.config.max_request_bytes)
            except BodyTooLarge:
                return error_reply(413, "request body too large", "invalid_request_error")
            header_backend = headers.get(b"x-backend")
            return await self.router.generate(path, body, header_backend.decode("latin-1") if header_backend else None, key)
        if path in READ_PATHS:
            if method != "GET":
                return method_not_allowed(method, path, GET)
            if path == "/metrics":
                return Reply(200, [(b"content-type", CONTENT_TYPE.encode())], self.router.metrics.exposition())
            payload = self.router.models(key) if path == "/v1/models" else self.router.backends()
            return Reply(200, JSON_HEADERS, json.dumps(payload).encode())
        if self.hook is not None:
            try:
                reply = await self.hook(method, path, scope, receive, key)
            except BodyTooLarge:
                return error_reply(413, "request body too large", "invalid_request_error")
            if reply is not None:
                return reply
        return error_reply(404, f"no route {path}", "invalid_request_error")


def _is_json(content_type: bytes | None) -> bool:
    """``application/json``, whatever its parameters (``charset``), as vLLM's server requires."""
    return content_type is not None and content_type.split(b";", 1)[0].strip().lower() == b"application/json"


def _document(path: str, method: str) -> Reply:
    if method not in READ:
        return method_not_allowed(method, path, READ)
    if path == "/openapi.json":
        return Reply(200, JSON_HEADERS, openapi.document_bytes())
    return Reply(200, [(b"content-type", b"text/html; charset=utf-8")], openapi.DOCS_PAGE)
