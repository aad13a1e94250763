"""``POST /v1/batch``: many prompts in one request, answered in input order.

``{"prompts": [...], "backend": "...", "model": "...", "params": {...}}`` -> ``{"results": [...],
"count": N, "backend": ...}``. A prompt is a string (one user message) or a list of chat messages.
Every item goes through the router's own ``generate`` in process, acting for the caller's key (the
same allow-lists, limits, token accounting, fallback, breaker and metrics as a single request; a
model or backend the key may not use is refused as a whole, 404 or 403, before any item runs), at
most ``endpoint_concurrency`` at a time; an item that fails becomes an OpenAI-style error object in
its place and never fails the others. An item that no backend can serve now (503, 429: engines
restarting, breakers open, the key's own rate limit) is retried with backoff for up to
``endpoint_wait_seconds`` (default 60) before its error is its result (``waiting``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import Field, ValidationError

from serve_apps.asgi import JSON_HEADERS, BodyTooLarge, Receive, Reply, read_body
from serve_apps.batch.config import BatchConfig
from serve_apps.batch.models import CHAT_PATH
from serve_apps.batch.routes import refusal
from serve_apps.batch.waiting import Gate
from serve_apps.openai_format import error_reply
from serve_apps.router.keys import ApiKey
from serve_apps.router.router import Router
from serve_apps.validation import StrictModel


class BatchPrompts(StrictModel):
    prompts: list[str | list[dict[str, Any]]] = Field(min_length=1)
    backend: str | None = None
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class PromptsEndpoint:
    def __init__(self, config: BatchConfig, router: Router) -> None:
        self.config = config
        self.router = router

    async def __call__(self, method: str, receive: Receive, key: ApiKey) -> Reply:
        refused = refusal(method, "/v1/batch")
        if refused is not None:
            return refused
        try:
            raw = await read_body(receive, self.config.endpoint_max_bytes)
        except BodyTooLarge:
            return error_reply(413, f"request body over {self.config.endpoint_max_bytes} bytes", "invalid_request_error")
        try:
            request = BatchPrompts.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return error_reply(400, f"{where}: {first['msg']}", "invalid_request_error")
        if len(request.prompts) > self.config.endpoint_max_items:
            return error_reply(400, f"{len(request.prompts)} prompts; the limit is {self.config.endpoint_max_items}",
                               "invalid_request_error")
        reserved = {"messages", "stream", "backend"} & set(request.params)
        if reserved:
            return error_reply(400, f"params may not set {', '.join(sorted(reserved))}", "invalid_request_error")
        if key.models is not None or key.backends is not None:
            refused = self.router.refusal(key, CHAT_PATH, request.model, request.backend)
            if refused is not None:
                return refused
        limit = asyncio.Semaphore(self.config.endpoint_concurrency)
        gate = Gate(self.config.retries)
        deadline = gate.clock() + self.config.endpoint_wait_seconds
        results = await asyncio.gather(*(self._one(request, prompt, key, limit, gate, deadline)
                                         for prompt in request.prompts))
        body = {"results": results, "count": len(results), "backend": request.backend}
        return Reply(200, list(JSON_HEADERS), json.dumps(body).encode())

    async def _one(self, request: BatchPrompts, prompt: str | list[dict[str, Any]], key: ApiKey,
                   limit: asyncio.Semaphore, gate: Gate, deadline: float) -> Any:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        payload: dict[str, Any] = {**request.params, "messages": messages}
        if request.model is not None:
            payload["model"] = request.model
        raw = json.dumps(payload).encode()

        async def attempt() -> tuple[int, bytes]:
            async with limit:  # a waiting item holds no slot
                reply = await self.router.generate(CHAT_PATH, raw, request.backend, key)
            return reply.status, reply.body  # type: ignore[return-value] - a whole body: never a stream

        try:
            answer = await gate.send(attempt, deadline)
        except Exception as exc:  # one item's failure is that item's error, never the batch's
            return json.loads(error_reply(500, f"internal error: {exc}", "internal_error").body)  # type: ignore[arg-type]
        try:
            return json.loads(answer.body)
        except ValueError:
            return json.loads(error_reply(502, f"backend answered {answer.status} with a non-JSON body",
                                          "bad_gateway").body)  # type: ignore[arg-type]
