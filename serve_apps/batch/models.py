"""OpenAI's Files and Batch objects and the JSONL line formats, with OpenAI's exact field names.

Objects we store and return forbid unknown keys (a typo is a bug, not data); a request *line* of an
input file is parsed leniently and checked field by field so every problem gets its own line number.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from serve_apps.router.keys import ANONYMOUS
from serve_apps.validation import StrictModel

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
ENDPOINTS = (CHAT_PATH, COMPLETIONS_PATH)
COMPLETION_WINDOW = "24h"
WINDOW_SECONDS = 24 * 3600
# list pages (`GET /v1/files`, `GET /v1/batches`): default and maximum `limit`
PAGE_DEFAULT, PAGE_LIMIT = 20, 100
# OpenAI's limits on a batch's ``metadata``: 16 pairs, keys up to 64 characters, values up to 512.
METADATA_PAIRS, METADATA_VALUE_CHARS = 16, 512
# The metadata key under which a batch that waits for a backend says since when and why.
WAITING_KEY = "waiting_for_backend"

BatchStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired",
                      "cancelling", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})


def new_id(prefix: str) -> str:
    """Time-ordered ids (``batch_<ns hex><random>``): listing newest-first is a reverse sort of names."""
    return f"{prefix}{time.time_ns():016x}{secrets.token_hex(6)}"


def now() -> int:
    return int(time.time())


class Owned(StrictModel):
    """An object that belongs to the key that created it, as at OpenAI: ``owner`` is that key's name
    (never the key itself), kept in storage and left out of every answer and of the API document."""

    owner: SkipJsonSchema[str | None] = Field(None, exclude=True)

    def visible_to(self, key: str) -> bool:
        """Whether the key called ``key`` may see (and act on) this. With auth off every caller is
        ``anonymous`` and sees everything, as before keys; an object stored without an owner (from
        before owners were kept) is then nobody's."""
        return key == ANONYMOUS or self.owner == key

    def stored(self) -> bytes:
        """The JSON kept in storage: the object with its owner."""
        return json.dumps({**self.model_dump(mode="json"), "owner": self.owner}).encode()


class FileObject(Owned):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class RequestCounts(StrictModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(StrictModel):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(StrictModel):
    object: Literal["list"] = "list"
    data: list[BatchError] = Field(default_factory=list)


class Batch(Owned):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str = COMPLETION_WINDOW
    status: BatchStatus = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None

    def moved_to(self, status: BatchStatus) -> Batch:
        """The same batch in ``status``, with that status's ``<status>_at`` stamped."""
        stamp = {"in_progress": "in_progress_at", "finalizing": "finalizing_at", "completed": "completed_at",
                 "failed": "failed_at", "expired": "expired_at", "cancelling": "cancelling_at",
                 "cancelled": "cancelled_at"}.get(status)
        update: dict[str, Any] = {"status": status}
        if stamp and getattr(self, stamp) is None:
            update[stamp] = now()
        return self.model_copy(update=update)

    def waiting(self) -> str | None:
        """Why the batch waits for a backend (``WAITING_KEY`` in its metadata), if it does."""
        return (self.metadata or {}).get(WAITING_KEY)

    def noted(self, note: str | None) -> Batch:
        """The same batch, its metadata saying ``note`` under ``WAITING_KEY`` (none: not waiting). The
        client's own pairs stay; with all 16 of OpenAI's pairs taken the note is left out."""
        note = note[:METADATA_VALUE_CHARS] if note is not None else None
        if note == self.waiting():
            return self
        metadata = {k: v for k, v in (self.metadata or {}).items() if k != WAITING_KEY}
        if note is not None and len(metadata) < METADATA_PAIRS:
            metadata[WAITING_KEY] = note
        return self.model_copy(update={"metadata": metadata or None})


class CreateBatch(StrictModel):
    """The body of ``POST /v1/batches``."""

    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = Field(None, max_length=METADATA_PAIRS)


class RequestLine(BaseModel):
    """One line of a batch input file (``{custom_id, method, url, body}``)."""

    custom_id: str = Field(min_length=1)
    method: str
    url: str
    body: dict[str, Any]


def output_line(custom_id: str, status: int | None, body: Any, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """One line of an output or error file, as OpenAI writes it."""
    response = None
    if status is not None:
        response = {"status_code": status, "request_id": secrets.token_hex(16), "body": body}
    return {"id": "batch_req_" + secrets.token_hex(12), "custom_id": custom_id, "response": response, "error": error}
