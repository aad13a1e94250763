"""ray-serve-cai: serve LLMs on Ray. The original public imports, re-exported.

``from ray_serve_cai import RayBackend`` and ``from ray_serve_cai.engines import get_registry,
register_engine`` keep working; the implementation lives in ``serve_apps`` and ``launchers``.
"""

__all__ = ["CAIClusterManager", "RayBackend"]


def __getattr__(name: str):
    # Lazy: both pull in heavy libraries (Ray Serve; the CML launcher's HTTP stack), and the CLI
    # (`ray-serve-cai --help`) must not pay for them.
    if name == "RayBackend":
        from ray_serve_cai.ray_backend import RayBackend

        return RayBackend
    if name == "CAIClusterManager":
        from launchers.cai.cluster import CAIClusterManager

        return CAIClusterManager
    raise AttributeError(f"module 'ray_serve_cai' has no attribute {name!r}")
