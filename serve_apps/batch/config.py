"""The ``batch:`` section of the router's arguments."""

from __future__ import annotations

from pydantic import Field

from serve_apps.validation import StrictModel

DEFAULT_STORAGE = "~/.cache/ray-serve-cai/batch"


class BatchConfig(StrictModel):
    """Where batch files live and how hard jobs may push the router. Defaults follow OpenAI's limits."""

    enabled: bool = Field(True, description="serve /v1/batch, /v1/files and /v1/batches")
    storage: str = Field(
        DEFAULT_STORAGE,
        description=("a directory or an fsspec URI (file://, s3://bucket/prefix, a CML project path); "
                     "every router replica and job actor must reach it, so use shared storage on a "
                     "multi-node cluster. The default is a directory of this stack's own under it "
                     "(<app>@<front door host>-<port>, serve_apps/batch/stack.py)"))
    max_file_bytes: int = Field(200 * 1024 * 1024, gt=0, description="upload limit per file (413 above)")
    max_requests: int = Field(50_000, ge=1, description="lines per batch input file")
    max_line_bytes: int = Field(1024 * 1024, gt=0, description="one request line of an input file")
    concurrency: int = Field(128, ge=1, description="requests in flight per batch job")
    flush_lines: int = Field(64, ge=1, description="results per checkpoint part")
    flush_seconds: float = Field(1.0, gt=0, description="longest wait before a checkpoint part is written")
    retries: int = Field(3, ge=0, description=(
        "extra attempts for a request the stack answered with an error about it (500, 504; a backend's "
        "5xx for it alone); a request that no backend can serve now (503, 429, the router restarting) "
        "waits for one until the batch's completion window ends instead (serve_apps/batch/waiting.py)"))
    supervise_seconds: float = Field(5.0, gt=0, description="how often each router replica resumes unfinished jobs")
    endpoint_max_items: int = Field(1000, ge=1, description="/v1/batch: prompts per request (400 above)")
    endpoint_max_bytes: int = Field(8 * 1024 * 1024, gt=0, description="/v1/batch: request body (413 above)")
    endpoint_concurrency: int = Field(16, ge=1, description="/v1/batch: items in flight per request")
    endpoint_wait_seconds: float = Field(
        60.0, ge=0, description=("/v1/batch: how long an item that no backend can serve now (503, 429) waits "
                                 "for one, retrying with backoff, before its error is its result"))
    namespace: str = Field("ray-serve-cai-batch", description="Ray namespace of the detached job actors")
