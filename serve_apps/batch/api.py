"""OpenAI's Files and Batch APIs over ``Storage`` and ``JobSupervisor``, as router routes.

``POST /v1/files`` (multipart, ``purpose=batch``), ``GET /v1/files``, ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``,
``DELETE /v1/files/{id}``, ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``GET /v1/batches``
(``after``, ``limit``), ``POST /v1/batches/{id}/cancel``. The HTTP request only records intent in
storage; the work happens in the batch's job actor.

Every file and batch belongs to the key that created it (``Owned``), as at OpenAI: another key gets
404 on it and does not see it in lists, and a batch's lines run as its owner. A batch's output and
error files are its owner's.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from pydantic import ValidationError

from serve_apps.asgi import JSON_HEADERS, BodyTooLarge, Receive, Reply, Scope, read_body
from serve_apps.batch.config import BatchConfig
from serve_apps.batch.jobs import JobSupervisor
from serve_apps.batch.models import (
    COMPLETION_WINDOW,
    ENDPOINTS,
    PAGE_DEFAULT,
    PAGE_LIMIT,
    TERMINAL,
    WINDOW_SECONDS,
    Batch,
    CreateBatch,
    FileObject,
    new_id,
    now,
)
from serve_apps.batch.routes import refusal
from serve_apps.batch.storage import Storage
from serve_apps.openai_format import error_body
from serve_apps.router.keys import ApiKey

JSON_LIMIT = 1024 * 1024
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _json(payload: Any, status: int = 200) -> Reply:
    return Reply(status, list(JSON_HEADERS), json.dumps(payload).encode())


def _invalid(message: str, param: str | None = None, status: int = 400, code: str | None = None) -> Reply:
    return Reply(status, list(JSON_HEADERS), error_body(status, message, type="invalid_request_error", code=code, param=param))


def _not_found(kind: str, object_id: str) -> Reply:
    return _invalid(f"No such {kind} object: {object_id}", None, 404, "not_found")


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises ``BodyTooLarge`` once more than ``limit`` body bytes arrived."""
    seen = 0

    async def wrapped() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise BodyTooLarge
        return message

    return wrapped


def _page(query: str, ids: list[str], view: Any) -> Reply:
    """One page of a newest-first listing: ``limit`` (1..``PAGE_LIMIT``, as the API document says),
    ``after`` (an id on the last page)."""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    raw_limit = params.get("limit", str(PAGE_DEFAULT))
    if not _INTEGER.fullmatch(raw_limit):  # `limit=` and `limit=1_0` are not integers
        return _invalid("limit must be an integer", "limit")
    limit = int(raw_limit)
    if not 1 <= limit <= PAGE_LIMIT:
        return _invalid(f"limit must be between 1 and {PAGE_LIMIT}", "limit")
    after = params.get("after")
    if after:
        ids = [i for i in ids if i < after]  # ids sort by creation time
    data: list[dict[str, Any]] = []
    rest = iter(ids)
    for object_id in rest:
        item = view(object_id)
        if item is not None:
            data.append(item.model_dump())
            if len(data) == limit:
                break
    has_more = any(view(i) is not None for i in rest) if len(data) == limit else False
    return _json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                  "last_id": data[-1]["id"] if data else None, "has_more": has_more})


class BatchAPI:
    def __init__(self, config: BatchConfig, storage: Storage, supervisor: JobSupervisor) -> None:
        self.config = config
        self.storage = storage
        self.supervisor = supervisor

    async def files(self, method: str, path: str, scope: Scope, receive: Receive, key: ApiKey) -> Reply:
        parts = path.strip("/").split("/")  # v1, files, [id, [content]]
        refused = refusal(method, path)
        if refused is not None:
            return refused
        if len(parts) == 2:
            if method == "GET":
                return await asyncio.to_thread(self._list_files, scope.get("query_string", b"").decode(), key)
            return await self._upload(scope, receive, key)
        file_id = parts[2]
        if len(parts) == 4:
            return await self._content(file_id, key)
        if method == "DELETE":
            return await asyncio.to_thread(self._delete_file, file_id, key)
        meta = await asyncio.to_thread(self._file, file_id, key)
        return _json(meta.model_dump()) if meta else _not_found("File", file_id)

    def _file(self, file_id: str, key: ApiKey) -> FileObject | None:
        """The stored file, if ``key`` may see it."""
        meta = self.storage.get_file(file_id)
        return meta if meta is not None and meta.visible_to(key.name) else None

    def _delete_file(self, file_id: str, key: ApiKey) -> Reply:
        """Delete a file unless a batch that has not ended uses it (409: a running batch reads its input
        until the end, and a resumed one again). Once its batch ended, a file may go, as at OpenAI: with
        no batch delete, refusing then would keep every batch's files forever."""
        if self._file(file_id, key) is None:
            return _not_found("File", file_id)
        users = [b for b in self.storage.batches_using(file_id) if b.status not in TERMINAL]
        if users:
            named = ", ".join(f"{b.id} ({b.status})" for b in users[:5])
            return _invalid(f"File {file_id} is used by batch {named}, which has not ended; delete it once the "
                            "batch has ended.", "file_id", 409, "file_in_use")
        if not self.storage.delete_file(file_id):
            return _not_found("File", file_id)
        return _json({"id": file_id, "object": "file", "deleted": True})

    async def _upload(self, scope: Scope, receive: Receive, key: ApiKey) -> Reply:
        from starlette.requests import Request

        request = Request(scope, _limited(receive, self.config.max_file_bytes + 64 * 1024))
        try:
            form = await request.form(max_files=1, max_fields=8)
        except BodyTooLarge:
            return _invalid(f"File is larger than the limit of {self.config.max_file_bytes} bytes.", "file", 413)
        except Exception as exc:  # malformed multipart: the client's mistake
            return _invalid(f"Could not parse the multipart body: {exc}", "file")
        try:
            purpose = form.get("purpose")
            upload = form.get("file")
            if purpose != "batch":
                return _invalid(f"Invalid purpose {purpose!r}: this server accepts purpose 'batch' only.", "purpose")
            if upload is None or isinstance(upload, str):
                return _invalid("Missing the file part ('file') of the multipart body.", "file")
            meta = FileObject(id=new_id("file-"), bytes=0, created_at=now(), filename=upload.filename or "upload.jsonl",
                              purpose="batch", owner=key.name)
            meta = await asyncio.to_thread(self.storage.save_file, meta, upload.file)
            if meta.bytes > self.config.max_file_bytes:
                await asyncio.to_thread(self.storage.delete_file, meta.id)
                return _invalid(f"File is larger than the limit of {self.config.max_file_bytes} bytes.", "file", 413)
            return _json(meta.model_dump())
        finally:
            await form.close()

    async def _content(self, file_id: str, key: ApiKey) -> Reply:
        if await asyncio.to_thread(self._file, file_id, key) is None:
            return _not_found("File", file_id)
        try:
            stream = await asyncio.to_thread(self.storage.open_file, file_id)
        except FileNotFoundError:  # deleted between the two reads (a concurrent DELETE): it is gone
            return _not_found("File", file_id)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while block := await asyncio.to_thread(stream.read, 1 << 20):
                    yield block
            finally:
                stream.close()

        return Reply(200, [(b"content-type", b"application/octet-stream")], chunks())

    # ------------------------------------------------------------------ batches

    async def batches(self, method: str, path: str, scope: Scope, receive: Receive, key: ApiKey) -> Reply:
        parts = path.strip("/").split("/")  # v1, batches, [id, [cancel]]
        refused = refusal(method, path)
        if refused is not None:
            return refused
        if len(parts) == 2:
            if method == "POST":
                return await self._create(receive, key)
            return await asyncio.to_thread(self._list, scope.get("query_string", b"").decode(), key)
        if len(parts) == 3:
            batch = await asyncio.to_thread(self._view, parts[2], key)
            return _json(batch.model_dump()) if batch else _not_found("Batch", parts[2])
        return await asyncio.to_thread(self._cancel, parts[2], key)

    async def _create(self, receive: Receive, key: ApiKey) -> Reply:
        try:
            raw = await read_body(receive, JSON_LIMIT)
            body = json.loads(raw)
        except BodyTooLarge:
            return _invalid("request body too large", None, 413)
        except ValueError as exc:
            return _invalid(f"request body is not valid JSON: {exc}")
        try:
            request = CreateBatch.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            return _invalid(f"{param}: {first['msg']}" if param else first["msg"], param)
        if request.endpoint not in ENDPOINTS:
            return _invalid(f"Invalid endpoint {request.endpoint!r}; supported: {', '.join(ENDPOINTS)}.", "endpoint")
        if request.completion_window != COMPLETION_WINDOW:
            return _invalid(f"Invalid completion_window {request.completion_window!r}; only '24h' is supported.",
                            "completion_window")
        source = await asyncio.to_thread(self._file, request.input_file_id, key)
        if source is None:
            return _invalid(f"No such File object: {request.input_file_id}", "input_file_id", 404, "not_found")
        if source.purpose != "batch":
            return _invalid(f"File {source.id} has purpose {source.purpose!r}, not 'batch'.", "input_file_id")
        created = now()
        batch = Batch(id=new_id("batch_"), endpoint=request.endpoint, input_file_id=request.input_file_id,
                      created_at=created, expires_at=created + WINDOW_SECONDS, metadata=request.metadata,
                      owner=key.name)
        await asyncio.to_thread(self.storage.save_batch, batch)
        await asyncio.to_thread(self.supervisor.ensure, batch.id)
        return _json(batch.model_dump())

    def _view(self, batch_id: str, key: ApiKey) -> Batch | None:
        """The stored batch, if ``key`` may see it; a cancel the job has not yet picked up already shows
        as ``cancelling``."""
        batch = self.storage.get_batch(batch_id)
        if batch is None or not batch.visible_to(key.name):
            return None
        if batch.status not in TERMINAL and batch.status != "cancelling" \
                and self.storage.cancel_requested(batch_id):
            batch = batch.moved_to("cancelling")
        return batch

    def _list(self, query: str, key: ApiKey) -> Reply:
        return _page(query, self.storage.batch_ids(), lambda batch_id: self._view(batch_id, key))

    def _list_files(self, query: str, key: ApiKey) -> Reply:
        purpose = parse_qs(query).get("purpose", [None])[-1]
        ids = self.storage.file_ids()

        def view(file_id: str) -> FileObject | None:
            meta = self._file(file_id, key)
            return meta if meta is not None and purpose in (None, meta.purpose) else None

        return _page(query, ids, view)

    def _cancel(self, batch_id: str, key: ApiKey) -> Reply:
        batch = self._view(batch_id, key)
        if batch is None:
            return _not_found("Batch", batch_id)
        if batch.status in TERMINAL:
            return _invalid(f"Cannot cancel a batch with status {batch.status!r}.", None, 409)
        self.storage.request_cancel(batch_id)
        self.supervisor.cancel(batch_id)
        return _json(batch.moved_to("cancelling").model_dump())
