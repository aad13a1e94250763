"""The bot's one seam to the router: ``RouterClient`` over the ``MultiBackendRouter`` deployment's
handle. Requests go through the router's own ``generate`` acting for an auth key by name (its
allow-lists, limits and token account, fallback, breaker, ``backend`` selection and mid-stream resume
all apply); the bot only reads the OpenAI SSE stream that comes back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

CHAT_PATH = "/v1/chat/completions"


class InferenceError(Exception):
    """The router answered with an error. ``status`` < 500 is the user's own mistake (unknown backend,
    unknown model, prompt too long); its message is safe and useful to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Generation:
    """One streamed answer: iterate ``deltas()`` for text; ``backend`` is the backend answering now
    (it changes when the router resumes a broken stream elsewhere)."""

    backend: str
    fallback_from: list[str]
    chunks: AsyncIterator[Any]
    resumed_from: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, int] | None = None

    async def deltas(self) -> AsyncIterator[str]:
        buffer = b""
        try:
            async for chunk in self.chunks:
                buffer += chunk
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    text = self._event(event)
                    if text:
                        yield text
        finally:
            await self.aclose()

    def _event(self, event: bytes) -> str | None:
        text: list[str] = []
        for line in event.split(b"\n"):
            if line.startswith(b": resumed on "):
                self.resumed_from.append(self.backend)
                self.backend = line[len(b": resumed on "):].split(b" ", 1)[0].decode()
                continue
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                continue
            payload = json.loads(data)
            if "error" in payload:
                error = payload["error"]
                code = error.get("code")
                raise InferenceError(code if isinstance(code, int) else 502, str(error.get("message", "stream failed")))
            if payload.get("usage"):
                self.usage = payload["usage"]
            for choice in payload.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return "".join(text)

    async def aclose(self) -> None:
        close = getattr(self.chunks, "aclose", None)
        if close is not None:
            await close()


class Inference(Protocol):
    """``key``: the name of the auth key a request acts for (None: the router has no keys)."""

    async def chat(self, body: dict[str, Any], backend: str | None, key: str | None) -> Generation: ...
    async def backends(self) -> list[dict[str, Any]]: ...
    async def models(self, key: str | None) -> list[dict[str, Any]]: ...


class RouterClient:
    """``Inference`` over a DeploymentHandle to ``MultiBackendRouter``."""

    def __init__(self, handle: Any) -> None:
        self._stream = handle.options(stream=True).generate_stream
        self._handle = handle

    async def chat(self, body: dict[str, Any], backend: str | None, key: str | None) -> Generation:
        raw = json.dumps({**body, "stream": True}).encode()
        chunks = self._stream.remote(CHAT_PATH, raw, backend, key).__aiter__()
        head = await chunks.__anext__()
        status, headers = head["status"], dict(head["headers"])
        if status != 200:
            raw = b"".join([chunk async for chunk in chunks])
            raise InferenceError(status, _error_message(raw))
        fallback = [name for name in headers.get("x-fallback-from", "").split(",") if name]
        return Generation(headers.get("x-backend", "?"), fallback, chunks)

    async def backends(self) -> list[dict[str, Any]]:
        return (await self._handle.backends_status.remote())["data"]

    async def models(self, key: str | None) -> list[dict[str, Any]]:
        return (await self._handle.model_list.remote(key))["data"]


def _error_message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:200] or "error"
