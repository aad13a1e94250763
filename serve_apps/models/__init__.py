"""Models the project can build itself, so nothing has to be downloaded."""

from serve_apps.models.tiny import TINY_MODEL_NAME, default_cache_dir, ensure_tiny_model

__all__ = ["TINY_MODEL_NAME", "default_cache_dir", "ensure_tiny_model"]
