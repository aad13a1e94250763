"""ray-serve-cai: serve LLMs on Ray. The seeds' public imports, re-exported.

``from ray_serve_cai import RayBackend`` and ``from ray_serve_cai.engines import get_registry,
register_engine`` keep working; the implementation lives in ``serve_apps`` and ``launchers``.
"""

from ray_serve_cai.ray_backend import RayBackend

__all__ = ["RayBackend"]
