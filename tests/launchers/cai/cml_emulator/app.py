"""The emulator as an ASGI app: faults, auth, spec routing, validation, then a handler.

Requests the contract does not allow are answered like grpc-gateway answers them (400 with
``{"error","code","message","details"}``); unknown JSON fields and query parameters are discarded,
as the gateway does by default, and listed in ``ignored`` so tests can assert the client sends none.
A response of the emulator itself that violates the contract, or a crash of a handler, is a bug of
the emulator: it is recorded in ``violations`` and answered with a JSON 500, so tests fail instead
of trusting a wrong fake. Every request, whatever its outcome, is recorded in ``calls``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .handlers import HANDLERS
from .spec import Operation, Spec
from .store import APIError, Store


@dataclass
class Fault:
    """Answer the next ``count`` requests whose "METHOD /path" contains ``match`` with ``status``
    (or stall them ``delay`` seconds first, to make the client time out)."""

    match: str
    status: int = 500
    count: int = 1
    delay: float = 0.0
    retry_after: str | None = "0"


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
        try:
            response = await self.handle(request, raw_path)
        except Exception as exc:  # a bug of the emulator, never the client's fault
            label = getattr(exc, "op_id", f"{request.method} {raw_path}")
            self.violations.append(f"{label}: {type(exc).__name__}: {exc}")
            response = error(500, 13, f"emulator bug: {type(exc).__name__}: {exc}")
        self.calls.append(f"{request.method} {raw_path} -> {response.status_code}")
        await response(scope, receive, send)

    async def handle(self, request: Request, raw_path: str) -> Response:
        line = f"{request.method} {raw_path}"
        for fault in list(self.faults):
            if fault.match in line and fault.count > 0:
                fault.count -= 1
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                resp = error(fault.status, 14 if fault.status >= 500 else 8, f"injected fault {fault.status}")
                resp.headers.update(headers)
                return resp
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
