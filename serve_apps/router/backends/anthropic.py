"""``kind: anthropic`` -- the Anthropic Messages API, translated both ways.

OpenAI -> Anthropic: ``system``/``developer`` messages -> top-level ``system``; ``max_tokens`` (or
``max_completion_tokens``, else the backend's ``default_max_tokens``: Anthropic requires it) ->
``max_tokens``; ``stop`` -> ``stop_sequences``; ``temperature``/``top_p``/``top_k``; ``user`` ->
``metadata.user_id``. A trailing assistant message is Anthropic's prefill, which is how a broken stream
is continued here (trailing whitespace is not allowed in a prefill: it is trimmed and dropped from the
start of the continuation). Tools, images and ``n > 1`` are refused with a 400 so the router tries a
backend that can take them.

Anthropic -> OpenAI: ``stop_reason`` -> ``finish_reason``; ``usage.input_tokens``/``output_tokens`` ->
``usage``; streaming events ``message_start``, ``content_block_*``, ``message_delta``, ``message_stop``
-> ``chat.completion.chunk`` events and ``[DONE]``; ``ping`` is dropped; an ``error`` event breaks the
stream (the router resumes elsewhere). Clients of the Messages API itself (``/v1/messages``) are
passed through untouched. Credentials: ``x-api-key`` from ``api_key`` (env or file).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from serve_apps.router.backends import translate
from serve_apps.router.backends.base import (
    CHAT_PATH,
    MESSAGES_PATH,
    Backend,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
)
from serve_apps.router.backends.http import HTTPClient
from serve_apps.router.config import BackendConfig

FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "refusal": "content_filter", "pause_turn": "stop"}


def to_anthropic(payload: dict[str, Any], default_max_tokens: int) -> tuple[dict[str, Any], str]:
    """The Messages API body, plus the whitespace trimmed off a prefill (to drop from the answer)."""
    if payload.get("n", 1) != 1 or payload.get("tools") or payload.get("functions"):
        raise ValueError("n > 1 and tools are not translated for Anthropic backends")
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in payload.get("messages") or []:
        role = message.get("role")
        text = translate.message_text(message.get("content"))
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant"):
            messages.append({"role": role, "content": text})
        else:
            raise ValueError(f"messages with role {role!r} are not translated for Anthropic backends")
    trimmed = ""
    if messages and messages[-1]["role"] == "assistant":
        content = messages[-1]["content"]
        stripped = content.rstrip()
        trimmed = content[len(stripped):]
        messages[-1] = {"role": "assistant", "content": stripped}
    body: dict[str, Any] = {
        "model": payload.get("model"),
        "messages": messages,
        "max_tokens": payload.get("max_completion_tokens") or payload.get("max_tokens") or default_max_tokens,
    }
    if system:
        body["system"] = "\n\n".join(system)
    stops = translate.stop_list(payload.get("stop"))
    if stops:
        body["stop_sequences"] = stops
    for key in ("temperature", "top_p", "top_k"):
        if payload.get(key) is not None:
            body[key] = payload[key]
    if payload.get("user"):
        body["metadata"] = {"user_id": str(payload["user"])}
    if payload.get("stream"):
        body["stream"] = True
    return body, trimmed


class AnthropicBackend(Backend):
    kind = "anthropic"
    can_resume = True  # prefill continues a trailing assistant message
    paths = frozenset({CHAT_PATH, MESSAGES_PATH})  # Messages requests pass through untouched

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self._client = HTTPClient(config)

    def _headers(self) -> dict[str, str]:
        key = self.config.api_key.resolve() if self.config.api_key else None
        headers = {"content-type": "application/json", "anthropic-version": self.config.anthropic_version}
        if key:
            headers["x-api-key"] = key
        return headers

    async def send(self, request: BackendRequest) -> BackendResponse:
        if request.path == MESSAGES_PATH:
            return await self._client.send("POST", self.config.url + MESSAGES_PATH, self._headers(), request.body,
                                           request.stream)
        payload = request.payload or {}
        try:
            body, trimmed = to_anthropic(payload, self.config.default_max_tokens)
        except ValueError as exc:
            raise translate.translation_refused(str(exc)) from None
        response = await self._client.send("POST", self.config.url + "/v1/messages", self._headers(), json.dumps(body).encode(),
                                           request.stream)
        if response.status != 200:
            return await self._error(response)
        model = payload.get("model") or ""
        if not request.stream:
            try:
                message = json.loads(await response.aread())
            except ValueError:
                raise BackendUnavailable("protocol", "invalid JSON from backend") from None
            text = "".join(b.get("text", "") for b in message.get("content", []) if b.get("type") == "text")
            if trimmed and text.startswith(trimmed):
                text = text[len(trimmed):]
            tokens = message.get("usage") or {}
            completion = translate.chat_completion(
                "chatcmpl-" + str(message.get("id", "")), model, text,
                FINISH.get(message.get("stop_reason") or "end_turn", "stop"),
                translate.usage(int(tokens.get("input_tokens", 0)), int(tokens.get("output_tokens", 0))),
            )
            return translate.json_response(200, completion)
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        chunks = self._chunks(response, model, include_usage, trimmed)
        return translate.stream_response(chunks, response)

    async def _error(self, response: BackendResponse) -> BackendResponse:
        raw = await response.aread()
        try:
            error = json.loads(raw).get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        message = error.get("message") or raw.decode(errors="replace")[:500]
        return translate.error_response(response, message, error.get("type") or "api_error")

    async def _chunks(self, response: BackendResponse, model: str, include_usage: bool, trimmed: str) -> AsyncIterator[bytes]:
        ident, created = translate.completion_id(), 0
        prompt_tokens = completion_tokens = 0
        finish: str | None = None
        async for line in translate.lines(response.stream):
            if not line.startswith(b"data:"):
                continue  # "event:" names repeat the data's "type"; blank lines end events
            try:
                event = json.loads(line[5:])
            except ValueError:
                raise BackendUnavailable("protocol", "invalid event data") from None
            kind = event.get("type")
            if kind == "message_start":
                message = event.get("message") or {}
                ident = "chatcmpl-" + str(message.get("id", ident))
                created = int(time.time())
                prompt_tokens = int((message.get("usage") or {}).get("input_tokens", 0))
                yield translate.chat_chunk(ident, created, model, {"role": "assistant", "content": ""})
            elif kind == "content_block_delta":
                delta = event.get("delta") or {}
                text = delta.get("text") if delta.get("type") == "text_delta" else None
                if text and trimmed:
                    text, trimmed = (text[len(trimmed):], "") if text.startswith(trimmed) else (text, "")
                if text:
                    yield translate.chat_chunk(ident, created, model, {"content": text})
            elif kind == "message_delta":
                finish = FINISH.get((event.get("delta") or {}).get("stop_reason") or "end_turn", "stop")
                completion_tokens = int((event.get("usage") or {}).get("output_tokens", completion_tokens))
                yield translate.chat_chunk(ident, created, model, {}, finish)
            elif kind == "message_stop":
                if include_usage:
                    yield translate.usage_chunk(ident, created, model, translate.usage(prompt_tokens, completion_tokens))
                yield translate.SSE_DONE
                return
            elif kind == "error":
                raise BackendUnavailable("protocol", str((event.get("error") or {}).get("type", "error")))
        raise BackendUnavailable("disconnect", "stream ended before message_stop")

    async def check_health(self) -> bool:
        return await self._client.get_ok(self.config.url + (self.config.health.path or "/v1/models"), self._headers())

    async def aclose(self) -> None:
        await self._client.aclose()
