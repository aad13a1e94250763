"""The engine app builder that ``serve build`` / ``serve run`` point at (``serve_apps.apps:build_app``).

It takes the application ``args`` dict from a serve config and validates it with pydantic
(``serve_apps.checks``), so a bad key fails at deploy time with its dotted path. Ray Serve is imported
only when an app is built, so importing this module is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serve_apps.checks import ConfigError, parse_engine_config

if TYPE_CHECKING:
    from ray.serve import Application

__all__ = ["ConfigError", "build_app", "parse_engine_config"]


def build_app(args: dict[str, Any] | None = None) -> Application:
    """One model on engine replicas, OpenAI API at the app's route prefix."""
    from serve_apps.replica import engine_deployment

    return engine_deployment(parse_engine_config(args))


def __getattr__(name: str) -> Any:
    # `serve build serve_apps.apps:app` wants a bound app; build it only when asked for.
    if name == "app":
        return build_app({})
    raise AttributeError(f"module 'serve_apps.apps' has no attribute {name!r}")
