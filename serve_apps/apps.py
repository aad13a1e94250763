"""App builders that ``serve build`` / ``serve run`` point at (``module:builder``).

Each takes the application ``args`` dict from a serve config and validates it with pydantic, so a
bad key fails at deploy time with its dotted path.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from ray import serve

from serve_apps.config import EngineConfig, format_validation_error
from serve_apps.engines.registry import get_registry
from serve_apps.replica import engine_deployment


class ConfigError(ValueError):
    """A serve config's args are invalid; the message names every bad key."""


def parse_engine_config(args: dict[str, Any] | None) -> EngineConfig:
    try:
        config = EngineConfig.model_validate(args or {})
    except ValidationError as exc:
        raise ConfigError(f"invalid engine app args: {format_validation_error(exc)}") from None
    if config.engine not in get_registry() and ":" not in config.engine:
        known = ", ".join(get_registry().names())
        raise ConfigError(f"invalid engine app args: engine: unknown engine {config.engine!r}; known: {known}")
    return config


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """One model on engine replicas, OpenAI API at the app's route prefix."""
    return engine_deployment(parse_engine_config(args))


# A default-bound app so `serve build serve_apps.apps:app` can emit a config skeleton.
app = build_app({})
