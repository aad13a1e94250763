"""``kind: serve`` transports on a real Serve cluster: engine workers publish their own HTTP port and
the router streams from it (``transport: auto``, the default), or goes through the
DeploymentHandle (``transport: handle``). A SIGKILLed engine replica must cost no client error.

The engine here is the test EchoEngine (a custom engine: no model to load), two replicas in the
router's own app; a fake OpenAI server is the next tier.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

import httpx
import pytest

from tests.serve_apps.router.helpers import backends, wait_for

ECHO = {"name": "echo", "engine": "tests.serve_apps.echo_engine:EchoEngine", "num_cpus": 0, "num_replicas": 2}
FAST = {"timeouts": {"connect": 1, "first_byte": 5, "idle": 5}, "health": {"interval": 0.5, "timeout": 2}}


@pytest.fixture(scope="module")
def url(router_cluster, fakes):
    return router_cluster.deploy({"transports": {"engines": [ECHO], "backends": [
        {"name": "echo-http", "kind": "serve", "engine": "echo", "tier": 0, **FAST},
        {"name": "echo-handle", "kind": "serve", "engine": "echo", "transport": "handle", "tier": 0, **FAST},
        {"name": "b", "kind": "openai", "url": fakes["b"].url, "models": ["echo"], "tier": 1, **FAST},
    ]}})["transports"]


def _endpoints(url: str) -> list[str]:
    return backends(url)["echo-http"]["endpoints"]


def chat(url: str, text: str, backend: str | None = None) -> httpx.Response:
    body = {"model": "echo", "messages": [{"role": "user", "content": text}], **({"backend": backend} if backend else {})}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def test_workers_publish_endpoints_and_http_is_used(url):
    wait_for(lambda: len(_endpoints(url)) == 2, timeout=60, message="two published endpoints")
    status = backends(url)
    assert status["echo-http"]["transport"] == "http"
    assert status["echo-handle"]["transport"] == "handle" and status["echo-handle"]["endpoints"] == []
    for endpoint in _endpoints(url):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", endpoint)
        assert httpx.get(endpoint + "/health", timeout=5).status_code == 200  # a real port of the replica
        # ... that serves only the router, which holds the replica's token (the port is on the node's address)
        body = {"model": "echo", "messages": [{"role": "user", "content": "sneaking past the router"}]}
        for headers in ({}, {"authorization": "Bearer not-the-token"}, {"authorization": "not-even-bearer"}):
            refused = httpx.post(endpoint + "/v1/chat/completions", json=body, headers=headers, timeout=5)
            assert refused.status_code == 401 and refused.json()["error"]["message"].startswith("this port is the router's")
    for backend in ("echo-http", "echo-handle"):
        response = chat(url, f"via {backend}", backend)
        assert response.status_code == 200
        assert response.headers["x-backend"] == backend
        assert response.json()["choices"][0]["message"]["content"] == f"via {backend}"


def test_sigkilled_replica_costs_no_client_error(url):
    wait_for(lambda: len(_endpoints(url)) == 2, timeout=90, message="two published endpoints")
    victim_port = int(_endpoints(url)[0].rsplit(":", 1)[1])
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{victim_port}"], capture_output=True, text=True, check=True).stdout
    pid = int(re.search(r"pid=(\d+)", out).group(1))
    os.kill(pid, signal.SIGKILL)
    answers = [chat(url, f"after kill {i}", "echo-http") for i in range(40)]
    assert [r.status_code for r in answers] == [200] * 40
    assert all(r.json()["choices"][0]["message"]["content"] == f"after kill {i}" for i, r in enumerate(answers))
    # the dead endpoint is dropped; Serve's replacement replica is found on a later health round
    wait_for(lambda: f"http://127.0.0.1:{victim_port}" not in _endpoints(url), timeout=30, message="dead endpoint dropped")
    wait_for(lambda: len(_endpoints(url)) == 2, timeout=120, message="replacement replica's endpoint")
