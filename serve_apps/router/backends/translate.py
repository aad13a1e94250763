"""OpenAI translation helpers shared by the translating backend kinds (Ollama, Anthropic): building
OpenAI answers, chunks, usage and errors from another protocol's, and reading its stream by lines."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from serve_apps.openai_format import SSE_DONE, error_body, sse_event  # noqa: F401 - SSE_DONE for the kinds
from serve_apps.router.backends.base import UNSUPPORTED, BackendResponse, BackendUnavailable, BytesStream, ByteStream


def json_response(status: int, payload: Any) -> BackendResponse:
    return BackendResponse(status, [("content-type", "application/json")], BytesStream(json.dumps(payload).encode()))


def error_response(source: BackendResponse, message: str, type_: str) -> BackendResponse:
    """An OpenAI error with the status of ``source`` (a translated backend's error answer); its
    Retry-After is kept so the router can honour it."""
    headers = [("content-type", "application/json")] + [h for h in source.headers if h[0] == "retry-after"]
    return BackendResponse(source.status, headers, BytesStream(error_body(source.status, message, type=type_)))


def stream_response(chunks: AsyncIterator[bytes], source: BackendResponse) -> BackendResponse:
    """A translated SSE stream; closing it closes ``source``'s."""
    return BackendResponse(200, [("content-type", "text/event-stream")], GeneratorStream(chunks, source.stream))


def completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{time.time_ns():x}"


class GeneratorStream(ByteStream):
    """A translated body: wraps an async generator of bytes; ``aclose`` closes it and its source."""

    def __init__(self, generator: AsyncIterator[bytes], source: ByteStream) -> None:
        self._generator = generator
        self._source = source

    async def _iterate(self) -> AsyncIterator[bytes]:
        async for chunk in self._generator:
            yield chunk

    async def aclose(self) -> None:
        await self._generator.aclose()  # type: ignore[attr-defined]
        await self._source.aclose()


async def lines(stream: ByteStream) -> AsyncIterator[bytes]:
    """Complete ``\\n``-terminated lines of a byte stream (NDJSON, SSE), without the newline."""
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r")
    if buffer.strip():
        yield buffer


def message_text(content: Any) -> str:
    """Text of an OpenAI message ``content`` (a string or a list of parts); other parts are refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ValueError("only text content parts can be translated for this backend")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise ValueError("message content must be a string or a list of text parts")


def stop_list(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else [str(s) for s in stop]


def chat_completion(ident: str, model: str, text: str, finish: str | None, usage: dict[str, int] | None) -> dict[str, Any]:
    return {
        "id": ident, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": usage,
    }


def chat_chunk(ident: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None,
               usage: dict[str, int] | None = None) -> bytes:
    payload: dict[str, Any] = {
        "id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        payload["usage"] = usage
    return sse_event(payload)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def usage_chunk(ident: str, created: int, model: str, usage: dict[str, int]) -> bytes:
    """The final usage-only chunk (``stream_options.include_usage``)."""
    return sse_event({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                      "choices": [], "usage": usage})


def translation_refused(message: str) -> BackendUnavailable:
    """The request cannot be expressed in this backend's protocol: not the backend's fault (the
    breaker is not charged) and not necessarily the client's (another backend may take it)."""
    return BackendUnavailable(UNSUPPORTED, message)
