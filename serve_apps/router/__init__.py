"""MultiBackendRouter: one OpenAI front door over many backends (see docs/router.md)."""

from serve_apps.router.config import BackendConfig, RouterAppArgs, RouterConfig

__all__ = ["BackendConfig", "RouterAppArgs", "RouterConfig"]
