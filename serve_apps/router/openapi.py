"""The router's OpenAPI 3.1 document: served at ``/openapi.json`` (and a viewer at ``/docs``) on every door.

The request and response schemas are vLLM's own OpenAI protocol models, the ones its engines validate
with, so the document says exactly what the engines accept. Importing vLLM takes ~15 s and the router
never needs it at run time, so the document is generated once, shipped as ``openapi.json`` next to this
module, and a test fails when the shipped file drifts from what this module generates:

    .venv/bin/python -m serve_apps.router.openapi          # rewrite serve_apps/router/openapi.json
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from serve_apps.batch.models import PAGE_DEFAULT, PAGE_LIMIT

DOCUMENT_PATH = Path(__file__).with_name("openapi.json")
REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """Every error the router answers itself (and the engines' errors, which share the shape)."""

    error: ErrorDetail


class Readiness(BaseModel):
    status: str = Field(description="`ready` or `not_ready`")
    models: dict[str, list[str]] | None = Field(None, description="each configured model and the backends that can serve it now")
    backends_ready: list[str] | None = None
    models_waiting: list[str] | None = Field(None, description="configured models no backend can serve now")


class BackendStatus(BaseModel):
    name: str
    kind: str
    tier: int
    healthy: bool
    breaker: str = Field(description="closed, open or half_open")
    outstanding: int
    latency_ms: float | None
    error_rate: float
    recent_requests: int
    last_error: str | None
    can_resume: bool


class BackendList(BaseModel):
    object: str = "list"
    data: list[BackendStatus]


class Health(BaseModel):
    status: str


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "headers": {**_X_BACKEND_ERROR, **(headers or {})},
            "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}}


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}
_X_BACKEND = {"x-backend": {"description": "the backend that answered", "schema": {"type": "string"}}}
_X_BACKEND_ERROR = {"x-backend": {"description": "the backend whose error this is, or `router` when the router "
                                  "answered itself (no backend was asked, or none could serve)",
                                  "schema": {"type": "string"}}}
_BACKEND_PARAM = {"name": "x-backend", "in": "header", "required": False, "schema": {"type": "string"},
                  "description": "pin the request to one backend (same as the body's `backend` field)"}
_RATE_LIMIT_TEXT = {"limit": "the key's {unit} per minute", "remaining": "{unit} left in the key's current minute",
                    "reset": "time until the key's {unit} window resets, e.g. `59.5s`"}
_RATE_LIMIT = {f"x-ratelimit-{what}-{unit}": {"description": text.format(unit=unit), "schema": {"type": "string"}}
               for unit in ("requests", "tokens") for what, text in _RATE_LIMIT_TEXT.items()}
_GENERATE_ERRORS = {
    "400": _error("malformed body, a Content-Type other than application/json, invalid field, unknown backend or a "
                  "request no backend supports"),
    "401": _error("missing or wrong API key (only when the router has keys)"),
    "403": _error("the key may not use the backend named, or any backend serving the model"),
    "404": _error("unknown model, a model the key may not use, or no backend serves this route for it"),
    "413": _error("request body larger than the router's `max_request_bytes`"),
    "429": _error("the key's requests or tokens per minute are spent (`code: rate_limit_exceeded`), or every "
                  "candidate backend is rate limited", {**_RETRY_AFTER, **_RATE_LIMIT}),
    "503": _error("no backend can serve the request now (all failed, or still starting)", _RETRY_AFTER),
    "504": _error("a non-streaming answer took longer than the backend's `timeouts.response` (unset by default)"),
}


def _generate_operation(summary: str, request: str, response: str, chunk: str,
                        stream_end: str = "`data: [DONE]`") -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [_BACKEND_PARAM],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(model=request)}}}},
        "responses": {
            "200": {
                "description": f"a {response}, or with `stream: true` server-sent events of {chunk} ending in {stream_end}",
                "headers": {**_X_BACKEND, **_RATE_LIMIT},
                "content": {"application/json": {"schema": {"$ref": REF.format(model=response)}},
                            "text/event-stream": {"schema": {"type": "string"}}},
            },
            **_GENERATE_ERRORS,
        },
    }


def _metrics_operation() -> dict[str, Any]:
    return {"summary": "this router replica's Prometheus series",
            "description": ("The router's series (backend health, breaker state, requests, latency, tokens per key, "
                            "...) in Prometheus text format, under the names Ray's metrics export gives them "
                            "(`ray_backend_request_count_total`, ...). One replica's view: with several router "
                            "replicas, scrape Ray's metrics export port instead."),
            "responses": {"200": {"description": "Prometheus text exposition format 0.0.4",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          "401": _GENERATE_ERRORS["401"]}}


def _get_operation(summary: str, model: str, auth: bool = True) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": summary,
                                         "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}}
    if auth:
        responses["401"] = _GENERATE_ERRORS["401"]
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if not auth:
        operation["security"] = []
    return operation


_BATCH_NOTE = " Served when the router app has a `batch:` section (404 otherwise)."


def _json_response(description: str, model: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


def _batch_operation(summary: str, model: str, errors: tuple[str, ...], body: dict[str, Any] | None = None,
                     parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": _json_response(summary, model), "401": _GENERATE_ERRORS["401"],
                                 "404": _error("unknown id, or batch not configured")}
    for status in errors:
        responses[status] = _error({"400": "invalid request", "403": "the API key may not use this backend",
                                    "409": "not in a state that allows this",
                                    "413": "body or file over the configured limit"}[status])
    operation: dict[str, Any] = {"summary": summary, "description": summary + "." + _BATCH_NOTE, "responses": responses}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    if parameters:
        operation["parameters"] = parameters
    return operation


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_PAGING = [{"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
           {"name": "limit", "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_LIMIT, "default": PAGE_DEFAULT}}]


def _batch_paths() -> dict[str, Any]:
    """The OpenAI Files and Batch API and the ``/v1/batch`` endpoint, from ``serve_apps.batch``'s models."""
    upload = {"multipart/form-data": {"schema": {"type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": ["batch"]}}}}}
    content = {"description": "the file's bytes (JSONL)", "content": {"application/octet-stream": {"schema": {"type": "string"}}}}
    return {
        "/v1/batch": {"post": _batch_operation("Run many prompts through the router, answered in input order",
                                               "BatchPromptsResponse", ("400", "403", "413"),
                                               {"application/json": {"schema": {"$ref": REF.format(model="BatchPrompts")}}})},
        "/v1/files": {"post": _batch_operation("Upload a batch input file", "FileObject", ("400", "413"), upload),
                      "get": _batch_operation("List files", "FileList", ("400",), parameters=_PAGING)},
        "/v1/files/{file_id}": {"get": _batch_operation("Retrieve a file", "FileObject", (), parameters=[_id("file_id")]),
                                "delete": _batch_operation("Delete a file", "FileDeleted", (), parameters=[_id("file_id")])},
        "/v1/files/{file_id}/content": {"get": {**_batch_operation("Retrieve a file's content", "FileObject", (),
                                                                   parameters=[_id("file_id")]),
                                                "responses": {"200": content, "401": _GENERATE_ERRORS["401"],
                                                              "404": _error("unknown id, or batch not configured")}}},
        "/v1/batches": {"post": _batch_operation("Create a batch", "Batch", ("400",),
                                                 {"application/json": {"schema": {"$ref": REF.format(model="CreateBatch")}}}),
                        "get": _batch_operation("List batches", "BatchList", ("400",), parameters=_PAGING)},
        "/v1/batches/{batch_id}": {"get": _batch_operation("Retrieve a batch", "Batch", (), parameters=[_id("batch_id")])},
        "/v1/batches/{batch_id}/cancel": {"post": _batch_operation("Cancel a batch", "Batch", ("409",),
                                                                   parameters=[_id("batch_id")])},
    }


class FileDeleted(BaseModel):
    id: str
    object: str = "file"
    deleted: bool


class _Page(BaseModel):
    object: str = "list"
    first_id: str | None
    last_id: str | None
    has_more: bool


def _batch_models() -> list[tuple[type[BaseModel], Any]]:
    from serve_apps.batch.endpoint import BatchPrompts
    from serve_apps.batch.models import Batch, CreateBatch, FileObject

    class FileList(_Page):
        data: list[FileObject]

    class BatchList(_Page):
        data: list[Batch]

    class BatchPromptsResponse(BaseModel):
        results: list[dict[str, Any]] = Field(description="a chat completion (with `_backend`) or an OpenAI error object per prompt")
        count: int
        backend: str | None

    return [(BatchPrompts, "validation"), (BatchPromptsResponse, "serialization"), (FileObject, "serialization"),
            (FileList, "serialization"), (FileDeleted, "serialization"), (CreateBatch, "validation"),
            (Batch, "serialization"), (BatchList, "serialization")]


def _relayed_models() -> list[tuple[type[BaseModel], Any]]:
    """vLLM's models of the routes the router relays beside chat and completions."""
    from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest, AnthropicMessagesResponse
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest, ResponsesResponse
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingCompletionRequest, EmbeddingResponse

    return [(ResponsesRequest, "validation"), (ResponsesResponse, "serialization"),
            (EmbeddingCompletionRequest, "validation"), (EmbeddingResponse, "serialization"),
            (AnthropicMessagesRequest, "validation"), (AnthropicMessagesResponse, "serialization")]


def _ready_operation() -> dict[str, Any]:
    return {"summary": "readiness: every configured model has a backend that can generate",
            "description": ("200 while, for each model the backends are configured with, at least one of them passed "
                            "its last health probe and has no open breaker (with no models configured: any backend). "
                            "Use it for load balancers and Kubernetes readiness probes; `/health` only says the process "
                            "serves. The body names the models and backends only when the router has no keys."),
            "security": [],
            "responses": {"200": {"description": "ready", "content": {"application/json": {
                                  "schema": {"$ref": REF.format(model="Readiness")}}}},
                          "503": {"description": "not ready: a model has no backend that can generate", "headers": _RETRY_AFTER,
                                  "content": {"application/json": {"schema": {"$ref": REF.format(model="Readiness")}}}}}}


def _with_backend_field(schema: dict[str, Any]) -> dict[str, Any]:
    """The router's one request extension: ``backend`` pins a backend and is removed before forwarding."""
    properties = dict(schema.get("properties", {}))
    properties["backend"] = {"type": "string", "description": "router extension: pin this request to one backend"}
    return {**schema, "properties": properties}


def build_document() -> dict[str, Any]:
    """Generate the document from vLLM's protocol models (slow: imports vLLM)."""
    from pydantic.json_schema import models_json_schema
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionRequest,
        ChatCompletionResponse,
        ChatCompletionStreamResponse,
    )
    from vllm.entrypoints.openai.completion.protocol import (
        CompletionRequest,
        CompletionResponse,
        CompletionStreamResponse,
    )
    from vllm.entrypoints.serve.engine.protocol import ModelList

    models: list[tuple[type[BaseModel], Any]] = [
        (ChatCompletionRequest, "validation"), (CompletionRequest, "validation"),
        (ChatCompletionResponse, "serialization"), (ChatCompletionStreamResponse, "serialization"),
        (CompletionResponse, "serialization"), (CompletionStreamResponse, "serialization"),
        (ModelList, "serialization"), (ErrorResponse, "serialization"), (BackendList, "serialization"),
        (Health, "serialization"), (Readiness, "serialization"), *_batch_models(), *_relayed_models(),
    ]
    _, schema = models_json_schema(models, ref_template=REF)
    schemas = schema["$defs"]
    for name in ("ChatCompletionRequest", "CompletionRequest", "ResponsesRequest", "EmbeddingCompletionRequest",
                 "AnthropicMessagesRequest"):
        schemas[name] = _with_backend_field(schemas[name])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ray-serve-cai MultiBackendRouter",
            "version": _package_version(),
            "description": ("OpenAI-compatible front door over engine replicas and external servers. Every "
                            "answer names its backend (`x-backend` header, `_backend` in JSON bodies)."),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {}],
        "paths": {
            "/v1/chat/completions": {"post": _generate_operation(
                "Create a chat completion", "ChatCompletionRequest", "ChatCompletionResponse", "ChatCompletionStreamResponse")},
            "/v1/completions": {"post": _generate_operation(
                "Create a completion", "CompletionRequest", "CompletionResponse", "CompletionStreamResponse")},
            "/v1/responses": {"post": _generate_operation(
                "Create a model response (OpenAI Responses API)", "ResponsesRequest", "ResponsesResponse",
                "Responses events", "`response.completed`")},
            "/v1/embeddings": {"post": _generate_operation(
                "Create embeddings (backends whose model embeds)", "EmbeddingCompletionRequest", "EmbeddingResponse",
                "(no streaming)", "-")},
            "/v1/messages": {"post": _generate_operation(
                "Create a message (Anthropic Messages API)", "AnthropicMessagesRequest", "AnthropicMessagesResponse",
                "Messages events", "`message_stop`")},
            "/v1/models": {"get": _get_operation(
                "the models every backend serves (configured, or as an openai backend without `models` lists them), "
                "aliases included; `backends` names the backends serving each", "ModelList")},
            "/v1/backends": {"get": _get_operation("each backend's health, breaker and load", "BackendList")},
            "/metrics": {"get": _metrics_operation()},
            "/health": {"get": _get_operation("liveness: the router process is up", "Health", auth=False)},
            "/ready": {"get": _ready_operation()},
            **_batch_paths(),
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "needed only when the router is configured with API keys"}},
        },
    }


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray-serve-cai")
    except PackageNotFoundError:
        return "0.0.0"


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


@functools.cache
def document_bytes() -> bytes:
    """The shipped document, compact, read once per process."""
    return json.dumps(json.loads(DOCUMENT_PATH.read_text()), separators=(",", ":")).encode()


DOCS_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>ray-serve-cai router API</title></head>
<body><div id="redoc"></div>
<p>The OpenAPI 3.1 document is at <a href="openapi.json">openapi.json</a>.</p>
<script src="https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"></script>
<script>if (window.Redoc) { Redoc.init("openapi.json", {}, document.getElementById("redoc")); }</script>
</body></html>
"""


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    DOCUMENT_PATH.write_text(render(build_document()))
    print(f"wrote {DOCUMENT_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
