"""Read a batch input file line by line (streamed) and check each request line like OpenAI does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from pydantic import ValidationError

from serve_apps.batch.models import ENDPOINTS, BatchError, RequestLine

MAX_REPORTED_ERRORS = 100  # a 50,000-line file of garbage needs no 50,000 error entries


def parse_line(raw: bytes, line: int, endpoint: str | None, max_line_bytes: int) -> RequestLine | BatchError:
    """One request line, or the error naming its line number and parameter."""
    if len(raw) > max_line_bytes:
        return BatchError(code="request_too_large", line=line,
                          message=f"line is {len(raw)} bytes; the limit per request is {max_line_bytes}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return BatchError(code="invalid_json_line", line=line,
                          message=f"This line is not parseable as valid JSON: {exc}")
    if not isinstance(data, dict):
        return BatchError(code="invalid_json_line", line=line, message="Each line must be a JSON object.")
    try:
        request = RequestLine.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
        return BatchError(code=code, line=line, param=param, message=f"{param}: {first['msg']}")
    if request.method.upper() != "POST":
        return BatchError(code="invalid_method", line=line, param="method",
                          message=f"Method {request.method!r} is not supported; only POST is.")
    if request.url not in ENDPOINTS:
        return BatchError(code="invalid_url", line=line, param="url",
                          message=f"URL {request.url!r} is not supported; use one of {', '.join(ENDPOINTS)}.")
    if endpoint is not None and request.url != endpoint:
        return BatchError(code="mismatched_endpoint", line=line, param="url",
                          message=f"The URL {request.url!r} does not match the batch endpoint {endpoint!r}.")
    return request


def numbered_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes) for every non-blank line."""
    for number, raw in enumerate(stream, start=1):
        if raw.strip():
            yield number, raw


@dataclass
class Scan:
    total: int = 0
    errors: list[BatchError] = field(default_factory=list)
    error_count: int = 0

    def add(self, error: BatchError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)


def scan(stream: IO[bytes], endpoint: str | None, max_line_bytes: int, max_requests: int) -> Scan:
    """Check a whole input file in one streamed pass: every line, unique custom_ids, the line count."""
    result = Scan()
    seen: dict[str, int] = {}
    for number, raw in numbered_lines(stream):
        result.total += 1
        parsed = parse_line(raw, number, endpoint, max_line_bytes)
        if isinstance(parsed, BatchError):
            result.add(parsed)
            continue
        first = seen.setdefault(parsed.custom_id, number)
        if first != number:
            result.add(BatchError(code="duplicate_custom_id", line=number, param="custom_id",
                                  message=(f"The custom_id {parsed.custom_id!r} for this request is a duplicate "
                                           f"of line {first}. The custom_id must be unique within a batch.")))
    if result.total == 0:
        result.add(BatchError(code="empty_file", message="The input file contains no requests."))
    if result.total > max_requests:
        result.add(BatchError(code="too_many_requests", message=(
            f"The input file has {result.total} requests; a batch holds at most {max_requests}.")))
    return result
