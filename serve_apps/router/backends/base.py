"""The one seam between the router and every kind of backend.

Like httpx's ``AsyncBaseTransport``, a backend has one method that matters: ``send()`` takes a request
and returns a ``BackendResponse`` -- a status, headers and an async byte stream that the caller must
``aclose()`` in ``try/finally``. The body is always what an OpenAI server would send over HTTP (JSON, or
SSE ``data: ...`` events for streams), so fallback, timeouts, resume and cancellation in the router never
depend on which kind of backend answered. Translating kinds (Ollama, Anthropic) translate inside their
own module; pass-through kinds hand bytes on untouched.

Transport failures are raised as ``BackendUnavailable`` -- from ``send()`` before the head, or from the
stream after it -- and are the only exceptions the router treats as "try another backend".

This module also holds the small aiohttp plumbing shared by the HTTP kinds (backend modules never import
each other).
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from urllib.parse import urlsplit

import aiohttp

from serve_apps.router.config import BackendConfig
from serve_apps.router.wire import WireError, WirePool, WireResponse

UNSUPPORTED = "unsupported"
HOP_BY_HOP = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


class BackendUnavailable(Exception):
    """The backend could not give a usable answer: connect error, timeout, dead stream, bad protocol.

    ``reason`` is a short metric label (``connect``, ``timeout``, ``disconnect``, ``protocol``).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(slots=True)
class BackendRequest:
    """An OpenAI API request on its way to a backend.

    ``body`` is the JSON body to send as-is; ``payload`` is the same body parsed (the router parses once;
    translating backends read ``payload``, pass-through backends send ``body``).
    """

    method: str
    path: str
    body: bytes = b""
    payload: dict[str, Any] | None = None
    stream: bool = False


class ByteStream(ABC):
    """An async iterator of body chunks with ``aclose()``; base for every backend's stream."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        # One iterator per stream: the router peeks the first chunk, then relays the rest, and a
        # translating stream keeps state between chunks.
        iterator = self.__dict__.get("_iterator")
        if iterator is None:
            iterator = self.__dict__["_iterator"] = self._iterate()
        return iterator

    @abstractmethod
    def _iterate(self) -> AsyncIterator[bytes]:
        """The body chunks (an async generator in every subclass)."""

    async def aclose(self) -> None:
        return None

    async def aread(self) -> bytes:
        try:
            return b"".join([chunk async for chunk in self])
        finally:
            await self.aclose()


class BytesStream(ByteStream):
    """A body already in memory (errors, translated non-streaming answers)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def _iterate(self) -> AsyncIterator[bytes]:
        if self._data:
            yield self._data


@dataclass(slots=True)
class BackendResponse:
    status: int
    headers: list[tuple[str, str]]
    stream: ByteStream = field(default_factory=lambda: BytesStream(b""))

    async def aread(self) -> bytes:
        return await self.stream.aread()

    async def aclose(self) -> None:
        await self.stream.aclose()


class Backend(ABC):
    """One configured backend. Subclasses set ``can_resume`` and ``paths`` and implement ``send``."""

    kind: str = ""
    can_resume: bool = False  # can continue a final assistant message (mid-stream resume target)
    paths: frozenset[str] = frozenset({CHAT_PATH, COMPLETIONS_PATH})

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name
        if config.resume_on_failure is not None:
            self.can_resume = self.can_resume and config.resume_on_failure

    @abstractmethod
    async def send(self, request: BackendRequest) -> BackendResponse:
        """Send ``request``; return once the response head is known. Raise ``BackendUnavailable``."""

    @abstractmethod
    async def check_health(self) -> bool:
        """One background health probe (bounded by ``config.health.timeout`` by the caller)."""

    def describe(self) -> dict[str, object]:
        """Kind-specific facts for ``/v1/backends``."""
        return {}

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:  # never shows credentials
        return f"<{type(self).__name__} {self.name!r}>"


# --------------------------------------------------------------------------- shared HTTP plumbing


class AiohttpStream(ByteStream):
    """Body of an aiohttp response, chunk by chunk as it arrives (``iter_any``: no re-framing),
    with an idle timeout between chunks; aiohttp errors become ``BackendUnavailable``."""

    def __init__(self, response: aiohttp.ClientResponse, idle: float) -> None:
        self._response = response
        self._idle = idle

    async def _iterate(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                async with asyncio.timeout(self._idle):
                    chunk = await content.readany()
            except TimeoutError:
                raise BackendUnavailable("timeout", "no data within idle timeout") from None
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise BackendUnavailable("disconnect", type(exc).__name__) from None
            if not chunk:
                return
            yield chunk

    async def aread(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle):
                return await self._response.read()
        except TimeoutError:
            raise BackendUnavailable("timeout", "body not complete within idle timeout") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise BackendUnavailable("disconnect", type(exc).__name__) from None
        finally:
            self._response.release()

    async def aclose(self) -> None:
        # close() drops the connection if the body was not fully read (a half-read stream cannot
        # be reused); release() after a complete read keeps it in the pool.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class WireStream(ByteStream):
    """Body of a ``wire`` response, with the idle timeout between chunks."""

    def __init__(self, response: WireResponse, idle: float) -> None:
        self._response = response
        self._idle = idle

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await self._response.read_chunk(self._idle)
            except TimeoutError:
                raise BackendUnavailable("timeout", "no data within idle timeout") from None
            except WireError as exc:
                raise BackendUnavailable("disconnect", str(exc)) from None
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        self._response.close()


class HTTPClient:
    """The HTTP side of a backend: ``wire`` (lean keep-alive HTTP/1.1) for plain-HTTP backends on the
    data path, aiohttp for TLS backends and for health probes.

    Measured here: a router on httpx kept 0.19-0.26 of direct throughput at concurrency 64 (most CPU in
    httpcore's pool), on aiohttp 0.71-0.88 (platform notes); ``wire`` spends less CPU per request than
    aiohttp (docs/router.md).
    """

    def __init__(self, config: BackendConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        parts = urlsplit(config.url or "")
        self._base = config.url or ""
        self._prefix = parts.path.rstrip("/")
        self._host_header = parts.netloc
        self._wire: WirePool | None = None
        if parts.scheme == "http" and parts.hostname:
            self._wire_target = (parts.hostname, parts.port or 80)
        else:
            self._wire_target = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeouts = self._config.timeouts
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._config.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=timeouts.connect, sock_connect=timeouts.connect
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
    ) -> aiohttp.ClientResponse:
        """Send and wait for the response head within ``timeouts.first_byte``."""
        try:
            async with asyncio.timeout(self._config.timeouts.first_byte):
                return await self.session.request(method, url, headers=headers, data=body)
        except TimeoutError:
            raise BackendUnavailable("timeout", "no response head within first_byte timeout") from None
        except aiohttp.ClientConnectorError as exc:
            raise BackendUnavailable("connect", type(exc).__name__) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise BackendUnavailable("disconnect", type(exc).__name__) from None

    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> BackendResponse:
        if self._wire_target is not None and url.startswith(self._base):
            return await self._send_wire(method, self._prefix + url[len(self._base):], headers, body or b"")
        response = await self.request(method, url, headers, body)
        head = [(k.lower(), v) for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP]
        return BackendResponse(response.status, head, AiohttpStream(response, self._config.timeouts.idle))

    async def _send_wire(self, method: str, path: str, headers: dict[str, str], body: bytes) -> BackendResponse:
        timeouts = self._config.timeouts
        if self._wire is None:
            self._wire = WirePool(*self._wire_target, self._config.max_connections)  # type: ignore[misc]
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = f"{method} {path} HTTP/1.1\r\nhost: {self._host_header}\r\n{lines}content-length: {len(body)}\r\n\r\n"
        try:
            response = await self._wire.request(head.encode("latin-1"), body, timeouts.connect, timeouts.first_byte)
        except TimeoutError:
            raise BackendUnavailable("timeout", "no response head within first_byte timeout") from None
        except WireError as exc:
            raise BackendUnavailable("disconnect", str(exc)) from None
        except OSError as exc:
            raise BackendUnavailable("connect", type(exc).__name__) from None
        head_list = [(k, v) for k, v in response.headers if k not in HOP_BY_HOP]
        return BackendResponse(response.status, head_list, WireStream(response, timeouts.idle))

    async def get_ok(self, url: str, headers: dict[str, str] | None = None) -> bool:
        """Health probe: True on a 2xx answer within ``health.timeout``."""
        try:
            async with asyncio.timeout(self._config.health.timeout):
                async with self.session.get(url, headers=headers or {}) as response:
                    await response.read()
                    return 200 <= response.status < 300
        except (TimeoutError, aiohttp.ClientError, ConnectionError, OSError):
            return False

    async def aclose(self) -> None:
        if self._wire is not None:
            self._wire.close()
        if self._session is not None and not self._session.closed:
            await self._session.close()


def error_body(message: str, type_: str, code: int | str | None = None, param: str | None = None) -> bytes:
    """An OpenAI-style error body."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def json_response(status: int, payload: Any) -> BackendResponse:
    return BackendResponse(status, [("content-type", "application/json")], BytesStream(json.dumps(payload).encode()))


def sse_event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{time.time_ns():x}"


def bearer_headers(token_factory: Callable[[], str | None]) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    token = token_factory()
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


# --------------------------------------------------------------------------- shared by translating kinds


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


def translation_refused(message: str) -> BackendUnavailable:
    """The request cannot be expressed in this backend's protocol: not the backend's fault (the
    breaker is not charged) and not necessarily the client's (another backend may take it)."""
    return BackendUnavailable(UNSUPPORTED, message)
