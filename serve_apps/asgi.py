"""ASGI plumbing for every app in the package: the types, reading a body, lifespan, the mount path,
and calling an app in-process.

Why in-process calls: the replica serves the engine's own OpenAI app over HTTP (fast path), and
DeploymentHandle callers (the router) and ``Engine.chat`` need the very same app and bytes without a
socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DONE = object()
ABANDON_GRACE_S = 5.0  # for an app told its client left to wind down before it is cancelled


class BodyTooLarge(Exception):
    """The request body went over the limit given to ``read_body``."""


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _single(payload: bytes) -> AsyncIterator[bytes]:
    yield payload


@dataclass
class EngineResponse:
    """A response as status, headers and body chunks. Close ``body`` if you stop reading early.

    The response type of the ``Engine`` protocol and of ``call_asgi`` (an engine's answer is what its
    ASGI app sends); header names and values are ``str`` because engines and their callers build them.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: AsyncIterator[bytes] = field(default_factory=_empty)

    async def read(self) -> bytes:
        """Collect the whole body (for non-streaming callers and tests)."""
        return b"".join([chunk async for chunk in self.body])

    @classmethod
    def complete(cls, status: int, content_type: str, payload: bytes) -> EngineResponse:
        """A response whose whole body is already in hand (JSON, or a finished SSE stream)."""
        return cls(status, [("content-type", content_type)], _single(payload))

    async def aclose(self) -> None:
        aclose = getattr(self.body, "aclose", None)
        if aclose is not None:
            await aclose()


JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class Reply:
    """An HTTP answer ready for ASGI: bytes headers, and a body that is either complete (JSON) or a
    stream the sender must ``aclose``. Why its own type (beside ``EngineResponse``): it is the one shape
    the router's doors, its batch routes and in-process callers get, whatever kind of backend produced
    it, with headers already in the bytes form ASGI sends."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes | AsyncIterator[bytes] = b""


def route_path(scope: Scope) -> str:
    """The path below the app's mount point (Serve sets ``root_path`` to the route prefix)."""
    path: str = scope["path"]
    root = scope.get("root_path") or ""
    if root and root != "/" and path.startswith(root):
        return path[len(root):] or "/"
    return path


async def read_body(receive: Receive, limit: int | None = None) -> bytes:
    """The whole request body (empty if the client went away); ``BodyTooLarge`` above ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown: the apps here hold no state that lifespan would manage."""
    while True:
        message = await receive()
        kind = message["type"].rsplit(".", 1)[-1]
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


async def send_response(send: Send, status: int, headers: list[tuple[bytes, bytes]],
                        body: bytes | AsyncIterator[bytes]) -> None:
    """Send a whole response: bytes with a content-length in one body message, or a stream chunk by
    chunk (closed afterwards, also when the client goes away)."""
    if isinstance(body, bytes):
        headers = headers + [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    try:
        async for chunk in body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


async def call_asgi(
    app: ASGIApp,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> EngineResponse:
    """Run one HTTP request through ``app``. The body streams; closing it cancels the request."""
    path, _, query = path.partition("?")
    header_list = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if body and not any(k == b"content-length" for k, _ in header_list):
        header_list.append((b"content-length", str(len(body)).encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": header_list,
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "state": {},
    }
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    disconnected = asyncio.Event()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await outbox.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        except BaseException as exc:  # surfaced to the reader below
            await outbox.put(exc)
        finally:
            await outbox.put(_DONE)

    task = asyncio.create_task(run())
    try:
        start = await outbox.get()
    except asyncio.CancelledError:
        # Our caller gave up before the head: tell the app as a server would (vLLM aborts on
        # ``http.disconnect``; cancelling its task from outside would orphan the task it generates
        # in), and cancel it only if it has not finished by itself after a grace period.
        disconnected.set()
        asyncio.get_running_loop().call_later(ABANDON_GRACE_S, task.cancel)
        raise
    if isinstance(start, BaseException):
        raise start
    if start is _DONE or start.get("type") != "http.response.start":
        task.cancel()
        raise RuntimeError("ASGI app finished without starting a response")

    async def chunks() -> AsyncIterator[bytes]:
        # Messages already waiting are joined into one chunk: a fast stream then costs its reader one
        # step per loop turn rather than one per event, and no chunk waits for a timer.
        finished = False
        try:
            while not finished:
                parts: list[bytes] = []
                failure: BaseException | None = None
                message = await outbox.get()
                while True:
                    if message is _DONE:
                        finished = True
                    elif isinstance(message, BaseException):
                        failure, finished = message, True
                    elif message.get("type") == "http.response.body":
                        if message.get("body"):
                            parts.append(message["body"])
                        finished = not message.get("more_body", False)
                    if finished or outbox.empty():
                        break
                    message = outbox.get_nowait()
                if parts:
                    yield parts[0] if len(parts) == 1 else b"".join(parts)
                if failure is not None:
                    raise failure
        finally:
            disconnected.set()
            if not task.done():
                task.cancel()

    response_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
    return EngineResponse(status=start["status"], headers=response_headers, body=chunks())
