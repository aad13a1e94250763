"""Backend kinds. ``create_backend`` maps a config's ``kind`` to its module, imported lazily so a
router without Anthropic backends never imports that translation code."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from serve_apps.router.backends.base import (
    Backend,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
    ByteStream,
)
from serve_apps.router.config import BackendConfig
from serve_apps.router.metrics import RouterMetrics

KINDS = {
    "openai": "serve_apps.router.backends.openai:OpenAIBackend",
    "ollama": "serve_apps.router.backends.ollama:OllamaBackend",
    "anthropic": "serve_apps.router.backends.anthropic:AnthropicBackend",
    "serve": "serve_apps.router.backends.serve:ServeBackend",
}


def create_backend(config: BackendConfig, handle: Any = None, metrics: RouterMetrics | None = None) -> Backend:
    module, _, cls = KINDS[config.kind].partition(":")
    backend_cls = getattr(import_module(module), cls)
    if config.kind == "serve":
        return backend_cls(config, handle, metrics)
    return backend_cls(config)


__all__ = ["Backend", "BackendRequest", "BackendResponse", "BackendUnavailable", "ByteStream", "create_backend"]
