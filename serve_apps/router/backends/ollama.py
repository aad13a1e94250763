"""``kind: ollama`` -- Ollama's native API (``/api/chat``), translated to and from OpenAI chat.

Requests: ``max_tokens`` -> ``options.num_predict``, ``stop``/``temperature``/``top_p``/``seed``/
penalties -> ``options``, ``response_format: json_object`` -> ``format: json``. Answers: one JSON
object (or NDJSON lines when streaming) -> ``chat.completion`` / SSE chunks; ``done_reason`` -> 
``finish_reason``; ``prompt_eval_count``/``eval_count`` -> ``usage``; ``{"error": ...}`` -> OpenAI
error body with the same status. Health: ``GET /api/tags``. (Ollama's own OpenAI-compatible
``/v1`` endpoint can be used instead as ``kind: openai`` with ``health.path: /api/tags``.)
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from serve_apps.router.backends import translate
from serve_apps.router.backends.base import CHAT_PATH, Backend, BackendRequest, BackendResponse, BackendUnavailable
from serve_apps.router.backends.http import HTTPClient, bearer_headers
from serve_apps.router.config import BackendConfig

OPTION_KEYS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
               "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
FINISH = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}


def to_ollama(payload: dict[str, Any]) -> dict[str, Any]:
    messages = [{"role": m.get("role", "user"), "content": translate.message_text(m.get("content"))}
                for m in payload.get("messages") or []]
    options = {ours: payload[theirs] for theirs, ours in OPTION_KEYS.items() if payload.get(theirs) is not None}
    max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    stops = translate.stop_list(payload.get("stop"))
    if stops:
        options["stop"] = stops
    body: dict[str, Any] = {"model": payload.get("model"), "messages": messages,
                            "stream": bool(payload.get("stream")), "options": options}
    if (payload.get("response_format") or {}).get("type") == "json_object":
        body["format"] = "json"
    return body


def _usage(answer: dict[str, Any]) -> dict[str, int]:
    return translate.usage(int(answer.get("prompt_eval_count") or 0), int(answer.get("eval_count") or 0))


class OllamaBackend(Backend):
    kind = "ollama"
    paths = frozenset({CHAT_PATH})

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self._client = HTTPClient(config)
        self._headers = bearer_headers(lambda: config.api_key.resolve() if config.api_key else None)

    async def send(self, request: BackendRequest) -> BackendResponse:
        payload = request.payload or {}
        try:
            body = to_ollama(payload)
        except ValueError as exc:
            raise translate.translation_refused(str(exc)) from None
        response = await self._client.send("POST", self.config.url + "/api/chat", self._headers, json.dumps(body).encode(),
                                           request.stream)
        if response.status != 200:
            return await self._error(response)
        if not request.stream:
            try:
                answer = json.loads(await response.aread())
            except ValueError:
                raise BackendUnavailable("protocol", "invalid JSON from backend") from None
            completion = translate.chat_completion(translate.completion_id(), payload.get("model") or answer.get("model", ""),
                                              answer.get("message", {}).get("content", ""),
                                              FINISH.get(answer.get("done_reason", "stop"), "stop"), _usage(answer))
            return translate.json_response(200, completion)
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        translated = self._chunks(response, payload.get("model") or "", include_usage)
        return translate.stream_response(translated, response)

    async def _error(self, response: BackendResponse) -> BackendResponse:
        raw = await response.aread()
        try:
            message = json.loads(raw).get("error") or raw.decode(errors="replace")
        except ValueError:
            message = raw.decode(errors="replace")
        type_ = "invalid_request_error" if response.status < 500 else "server_error"
        return translate.error_response(response, str(message), type_)

    async def _chunks(self, response: BackendResponse, model: str, include_usage: bool) -> AsyncIterator[bytes]:
        ident, created = translate.completion_id(), int(time.time())
        started = False  # the role chunk waits for Ollama's first line: until then a failure stays invisible
        async for line in translate.lines(response.stream):
            if not line.strip():
                continue
            if not started:
                started = True
                yield translate.chat_chunk(ident, created, model, {"role": "assistant", "content": ""})
            try:
                item = json.loads(line)
            except ValueError:
                raise BackendUnavailable("protocol", "invalid NDJSON line") from None
            if item.get("error"):
                raise BackendUnavailable("protocol", "error line in stream")
            text = (item.get("message") or {}).get("content")
            if text:
                yield translate.chat_chunk(ident, created, model, {"content": text})
            if item.get("done"):
                finish = FINISH.get(item.get("done_reason", "stop"), "stop")
                yield translate.chat_chunk(ident, created, model, {}, finish)
                if include_usage:
                    yield translate.usage_chunk(ident, created, model, _usage(item))
                yield translate.SSE_DONE
                return
        raise BackendUnavailable("disconnect", "stream ended before done")

    async def check_health(self) -> bool:
        return await self._client.get_ok(self.config.url + (self.config.health.path or "/api/tags"), self._headers)

    async def aclose(self) -> None:
        await self._client.aclose()
