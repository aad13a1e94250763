"""What the router reads from bodies and headers without owning them: a request's container fields
checked for type, the model a request names to its backend, whether an error body is OpenAI-shaped,
a ``Retry-After``. Small pure functions, kept out of ``router.py`` so the routing reads in one sitting."""

from __future__ import annotations

import json
from typing import Any

from serve_apps.router.backends.base import BackendRequest

# Fields an engine reads as an object or a list before validating them: vLLM 0.32 answers 500 to
# ``"structured_outputs": [...]`` (found by the fuzz test). Checked here, where the body is parsed
# anyway, so a wrong type is the client's 400 on every backend.
_CONTAINER_FIELDS: tuple[tuple[str, type, str], ...] = (
    ("messages", list, "an array"), ("structured_outputs", dict, "an object"), ("response_format", dict, "an object"),
    ("stream_options", dict, "an object"), ("kv_transfer_params", dict, "an object"), ("tools", list, "an array"),
)


def wrong_type(payload: dict[str, Any]) -> str | None:
    for name, kind, spelled in _CONTAINER_FIELDS:
        value = payload.get(name)
        if value is not None and not isinstance(value, kind):
            return f"`{name}` must be {spelled}"
    return None


def is_openai_error(data: bytes) -> bool:
    try:
        payload = json.loads(data)
    except ValueError:
        return False
    return isinstance(payload, dict) and isinstance(payload.get("error"), dict)


def routed_model(request: BackendRequest) -> str:
    """The model as a request names it to its backend (a metric label; "" if the request names none)."""
    model = (request.payload or {}).get("model")
    return model if isinstance(model, str) else ""


def retry_after(headers: list[tuple[str, str]]) -> float | None:
    for key, value in headers:
        if key == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None
