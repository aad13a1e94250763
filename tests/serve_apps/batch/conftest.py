"""A router app with batch enabled, next to the session's one vLLM engine (``serve_stack``), helpers to
find and SIGKILL the processes of a batch job and of the router replica, and ``fake``: one OpenAI fake
backend process per test module (no engine)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import MODEL, write_serve_config
from tests.serve_apps.router.conftest import FakeBackend
from tests.serve_apps.router.helpers import backends, wait_for

APP = "batchrouter"


@dataclass
class BatchRouter:
    url: str
    storage: Path


def closed_port() -> int:
    """A loopback port nobody listens on: a backend that is down (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    server = FakeBackend("openai").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def batch_router(serve_stack, tmp_path_factory) -> BatchRouter:
    tmp = tmp_path_factory.mktemp("batch")
    port = int(serve_stack.base_url.rsplit(":", 1)[1])
    config = yaml.safe_load(write_serve_config(tmp / "base.yaml", port, serve_stack.ready_file).read_text())
    fast = {"timeouts": {"connect": 2, "first_byte": 60, "idle": 30}, "health": {"interval": 1, "timeout": 5}}
    router_backends = [
        {"name": "down", "kind": "openai", "url": f"http://127.0.0.1:{closed_port()}", "models": [MODEL], "tier": 0, **fast},
        {"name": "replica", "kind": "serve", "app": "llm", "deployment": f"engine-{MODEL}", "models": [MODEL],
         "tier": 1, **fast},
    ]
    storage = tmp / "storage"
    batch = {"storage": str(storage), "flush_lines": 8, "flush_seconds": 0.2, "supervise_seconds": 1,
             "concurrency": 8, "endpoint_max_items": 50, "endpoint_max_bytes": 200_000, "max_requests": 1000}
    config["applications"].append({"name": APP, "route_prefix": f"/{APP}", "import_path": "serve_apps.router.app:build_router_app",
                                   "args": {"backends": router_backends, "batch": batch}})
    path = tmp / "with-batch-router.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_stack.cluster.deploy(path)
    url = f"{serve_stack.base_url}/{APP}"
    serve_stack.cluster.wait_ready(f"{url}/health", timeout_s=180)
    # the live backend is healthy (the dead one never will be)
    wait_for(lambda: backends(url)["replica"]["healthy"], timeout=60, message="the engine backend healthy")
    return BatchRouter(url, storage)


def pids_titled(prefix: str) -> list[int]:
    """Processes whose title (Ray sets ``ray::<Actor>.<method>``) starts with ``prefix``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(prefix):
            found.append(int(entry.name))
    return found


def sigkill(prefix: str, timeout: float = 30) -> int:
    """SIGKILL the one process titled ``prefix`` (waiting for it to exist); returns its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = pids_titled(prefix)
        if pids:
            assert len(pids) == 1, f"expected one {prefix} process, found {pids}"
            os.kill(pids[0], signal.SIGKILL)
            return pids[0]
        time.sleep(0.1)
    raise AssertionError(f"no process titled {prefix}")
