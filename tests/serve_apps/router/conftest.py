"""Fixtures for the router tests: a Ray cluster of their own on loopback (no engine needed), real
fake-backend processes, and ``deploy()`` which puts router apps on the cluster with ``serve deploy``.

Engine tests (``@pytest.mark.engine``) reuse the session's one vLLM engine (``serve_stack`` from
tests/conftest.py) instead of starting another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from launchers.local import LocalCluster, free_port

ROOT = Path(__file__).resolve().parents[3]
FAKE = Path(__file__).with_name("fake_backend.py")
ANTHROPIC_KEY = "sk-ant-test-0123456789"


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/_control", json={}, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(f"fake backend on :{port} did not come up")


@dataclass
class FakeBackend:
    """One fake backend process (see fake_backend.py); ``kill()`` is a real SIGKILL."""

    protocol: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeBackend:
        env = {**os.environ, "FAKE_ANTHROPIC_KEY": ANTHROPIC_KEY}
        self.process = subprocess.Popen([sys.executable, str(FAKE), "--protocol", self.protocol, "--port", str(self.port)],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ensure(self) -> FakeBackend:
        """Running, healthy and fault-free (restarted on the same port if a test killed it)."""
        if not self.alive():
            self.start()
        self.control(mode="ok", die_after=None, delay=0.0, retry_after=None, healthy=True)
        return self

    def control(self, **state: Any) -> None:
        httpx.post(f"{self.url}/_control", json=state, timeout=5).raise_for_status()

    def requests(self) -> int:
        return httpx.get(f"{self.url}/_stats", timeout=5).json()["requests"]

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@dataclass
class RouterCluster:
    cluster: LocalCluster
    http_port: int
    config_dir: Path
    base_apps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def deploy(self, routers: dict[str, dict[str, Any]], timeout: float = 120) -> dict[str, str]:
        """Deploy ``{app name: build_router_app args}`` at ``/<name>`` (replacing earlier routers)."""
        apps = list(self.base_apps) + [
            {"name": name, "route_prefix": f"/{name}", "import_path": "serve_apps.router.app:build_router_app",
             "args": args} for name, args in routers.items()
        ]
        config = {"http_options": {"host": "127.0.0.1", "port": self.http_port}, "applications": apps}
        path = self.config_dir / f"routers-{time.time_ns()}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.cluster.deploy(path)
        urls = {name: f"{self.base_url}/{name}" for name in routers}
        deadline = time.monotonic() + timeout
        for url in urls.values():
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"router at {url} not ready")
                time.sleep(0.3)
        return urls

    def metrics_port(self) -> int:
        code = "import ray, json; ray.init(address='auto', logging_level='ERROR'); print(json.dumps([n['MetricsExportPort'] for n in ray.nodes() if n['Alive']]))"
        out = subprocess.run([sys.executable, "-c", code], env=self.cluster.env(), capture_output=True, text=True, timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1])[0]


@pytest.fixture(scope="session")
def router_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterCluster]:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    cluster = LocalCluster(extra_env={"PYTHONPATH": pythonpath})
    cluster.start()
    try:
        yield RouterCluster(cluster, free_port(), tmp_path_factory.mktemp("router"))
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeBackend]]:
    """Two OpenAI fakes, one Ollama, one Anthropic -- real processes, restarted when a test kills one."""
    servers = {
        "a": FakeBackend("openai"), "b": FakeBackend("openai"),
        "ollama": FakeBackend("ollama"), "claude": FakeBackend("anthropic"),
    }
    for server in servers.values():
        server.start()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.kill()
