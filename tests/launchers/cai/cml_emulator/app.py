"""The emulator as an ASGI app: faults, auth, spec routing, validation, then a handler.

Requests the contract does not allow are answered like grpc-gateway answers them (400 with
``{"error","code","message","details"}``); unknown JSON fields and query parameters are discarded,
as the gateway does by default, and listed in ``ignored`` so tests can assert the client sends none.
A response of the emulator itself that violates the contract, or a crash of a handler, is a bug of
the emulator: it is recorded in ``violations`` and answered with a JSON 500, so tests fail instead
of trusting a wrong fake. Every request, whatever its outcome, is recorded in ``calls``.

Faults fire before the handler (the server did nothing) or after it (``after=True``: the server
acted and committed, the client sees a 5xx or a connection reset instead of the answer), once per
matching request or, with ``each_line``, once per distinct "METHOD /path".
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .handlers import HANDLERS
from .spec import Operation, Spec
from .store import APIError, Store


@dataclass
class Fault:
    """Spoil the next ``count`` requests whose "METHOD /path" contains ``match``: stall ``delay``
    seconds (the client times out), then answer ``status`` or, with ``reset``, reset the connection.
    ``after``: the handler runs first and its effect stays (``status=None`` then sends the real
    answer, late). ``each_line``: ``count`` applies to each distinct "METHOD /path" separately."""

    match: str
    status: int | None = 500
    count: int = 1
    delay: float = 0.0
    retry_after: str | None = "0"
    after: bool = False
    reset: bool = False
    each_line: bool = False
    body: bytes | None = None  # answer this instead of an error JSON (an HTML page, a bad JSON page)
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    skip: int = 0  # let this many matching requests through first
    hits: dict[str, int] = field(default_factory=dict)

    def take(self, line: str, after: bool) -> bool:
        if self.after != after or self.match not in line:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        key = line if self.each_line else ""
        if self.hits.get(key, 0) >= self.count:
            return False
        self.hits[key] = self.hits.get(key, 0) + 1
        return True

    def label(self, status: int) -> str:
        """How ``calls`` records it: "502", "reset", "502 after 200", "reset after 200"."""
        spoiled = "reset" if self.reset else str(self.status if self.status is not None else status)
        return f"{spoiled} after {status}" if self.after else spoiled


class Reset(Exception):
    """Close the client's connection with a TCP reset instead of answering."""


def _reset_connection() -> None:
    """Abort the connection of the current request with RST (SO_LINGER 0). uvicorn does not hand the
    transport to the app, so it is taken from the request task's protocol cycle."""
    task = asyncio.current_task()
    frame = task.get_coro().cr_frame if task is not None else None  # type: ignore[union-attr]
    cycle = frame.f_locals.get("self") if frame is not None else None
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise Reset("no transport to reset")  # the ASGI server then drops the connection itself
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    cycle.disconnected = True  # uvicorn: the client is gone, nothing to answer (and nothing to log)


def _keys(param: dict | None, label: str) -> list[str]:
    """Supported search/sort keys, as the spec's parameter description lists them, plus the keys its
    prose and example use (ListJobRuns lists job fields but documents ``{"status":..., "id":...}``)."""
    if not param:
        return []
    text = param.get("description", "")
    found = re.search(label + r"[^\[]*\[([^\]]*)\]", text)
    keys = [k.strip(' "') for k in re.split(r"[,\s]+", found.group(1)) if k.strip(' "')] if found else []
    if label.startswith("search"):
        keys += re.findall(r'where "(\w+)" can be', text) + re.findall(r'"([\w.]+)"\s*:', text)
    return list(dict.fromkeys(keys))


def error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code, "message": message, "details": []}, status_code=status)


class EmulatorApp:
    def __init__(self, spec: Spec, store: Store) -> None:
        self.spec, self.store = spec, store
        self.faults: list[Fault] = []
        self.violations: list[str] = []
        self.ignored: list[str] = []  # unknown body fields / query parameters the gateway would drop
        self.calls: list[str] = []  # "METHOD raw_path -> status", for assertions

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        raw_path = scope.get("raw_path", scope["path"].encode()).decode("latin-1").split("?", 1)[0]
        line = f"{request.method} {raw_path}"
        await request.body()  # read now: a stalled request is handled after its client may have left
        fault = next((f for f in self.faults if f.take(line, after=False)), None)
        if fault is not None:
            spoil = fault.reset or fault.status is not None  # the server never acts
            if spoil:
                self.calls.append(f"{line} -> {fault.label(0)}")  # now: the client sees it before the delay ends
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if spoil:
                await self._spoil(fault, scope, receive, send)
                return
        response = await self._answer(request, raw_path, line)
        fault = next((f for f in self.faults if f.take(line, after=True)), None)
        if fault is None:
            self.calls.append(f"{line} -> {response.status_code}")
            await response(scope, receive, send)
            return
        self.calls.append(f"{line} -> {fault.label(response.status_code)}")  # the server has acted
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.reset or fault.status is not None:
            await self._spoil(fault, scope, receive, send)
        else:
            await response(scope, receive, send)

    async def _answer(self, request: Request, raw_path: str, line: str) -> Response:
        try:
            return await self.handle(request, raw_path)
        except Exception as exc:  # a bug of the emulator, never the client's fault
            label = getattr(exc, "op_id", line)
            self.violations.append(f"{label}: {type(exc).__name__}: {exc}")
            return error(500, 13, f"emulator bug: {type(exc).__name__}: {exc}")

    @staticmethod
    async def _spoil(fault: Fault, scope: dict, receive: Any, send: Any) -> None:
        if fault.reset:
            _reset_connection()
            return
        assert fault.status is not None
        response: Response
        if fault.body is not None:
            response = Response(fault.body, fault.status, media_type=fault.content_type)
        else:
            response = error(fault.status, 14 if fault.status >= 500 else 8, f"injected fault {fault.status}")
        if fault.retry_after is not None:
            response.headers["Retry-After"] = fault.retry_after
        response.headers.update(fault.headers)
        await response(scope, receive, send)

    async def handle(self, request: Request, raw_path: str) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.store.api_key}":
            return error(401, 16, "Unauthenticated: invalid API key")
        matched = self.spec.match(request.method, raw_path)
        if matched is None:
            return error(404, 5, "Not Found")
        operation, values = matched
        handler = HANDLERS.get(operation.op_id)
        if handler is None:
            return error(501, 12, f"{operation.op_id} is not emulated")
        query_pairs = parse_qsl(request.url.query, keep_blank_values=True)
        try:
            body, form = await self._body(request, operation)
        except ValueError as exc:
            return error(400, 3, str(exc))
        problems, ignored = self.spec.request_errors(operation, query_pairs, body if not operation.form else None)
        if problems:
            return error(400, 3, "; ".join(problems))
        self.ignored += [f"{operation.op_id}: {what}" for what in ignored]
        query_pairs = [(k, v) for k, v in query_pairs if k in operation.query]
        names = [n.replace(".", "_") for n in re.findall(r"\{([^}]+)\}", operation.template)]
        kwargs: dict[str, Any] = dict(zip(names, values, strict=True))
        available = {"store": self.store, "body": body, "form": form, "query": dict(query_pairs),
                     "search_keys": _keys(operation.query.get("search_filter"), "search filter keys"),
                     "sort_keys": _keys(operation.query.get("sort"), "sort keys")}
        wanted = inspect.signature(handler).parameters
        kwargs |= {k: v for k, v in available.items() if k in wanted}
        try:
            with self.store.lock:
                result = handler(**kwargs)
        except APIError as exc:
            return error(exc.status, exc.code, exc.message)
        except Exception as exc:
            exc.op_id = operation.op_id  # type: ignore[attr-defined]
            raise
        if isinstance(result, bytes):
            return Response(result, media_type="application/octet-stream")
        result = {} if result is None else result
        violations = self.spec.response_errors(operation, result)
        if violations:
            self.violations.append(f"{operation.op_id}: {violations}")
            return error(500, 13, f"emulator response violates the spec: {violations}")
        return JSONResponse(result)

    @staticmethod
    async def _body(request: Request, operation: Operation) -> tuple[Any, dict[str, bytes]]:
        if operation.form:
            if not request.headers.get("content-type", "").startswith("multipart/form-data"):
                raise ValueError("multipart/form-data expected")
            try:
                form = await request.form()
            except Exception as exc:  # any parse failure is the sender's: a part without a name, no boundary...
                raise ValueError(f"malformed multipart/form-data body ({type(exc).__name__}: {exc})") from None
            files = {}
            for name, value in form.multi_items():
                files[name] = await value.read() if hasattr(value, "read") else str(value).encode()
            return None, files
        raw = await request.body()
        if not raw:
            return None, {}
        try:
            return json.loads(raw), {}
        except ValueError:
            raise ValueError("request body is not valid JSON") from None
