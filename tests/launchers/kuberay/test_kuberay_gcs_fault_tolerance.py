"""GCS fault tolerance for real, the way the prod overlay sets it up (`gcsFaultToleranceOptions`: an
external Redis with a password): a Ray head (no CPUs, like the overlay's) keeps its state in a real
redis-server, a worker node on its own loopback address runs the router replica, the Serve app is
deployed once. The head's whole process tree is SIGKILLed and the head restarted: the router keeps
answering on the worker while the head is gone, and afterwards the app is RUNNING on the new head and
answers through its proxy again, with no redeploy. Heavy (Ray): run under the shared lock."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from launchers.local import LocalCluster, _bin, descendants, free_port
from tests.serve_apps.router.conftest import FakeBackend
from tests.serve_apps.router.helpers import chat_body

ROOT = Path(__file__).resolve().parents[3]
REDIS = shutil.which("redis-server")
WORKER_IP = "127.0.0.2"


def wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def chat(url: str) -> int:
    return httpx.post(url + "/v1/chat/completions", json=chat_body(), timeout=10).status_code


def kill_tree(pid: int) -> None:
    tree = descendants(pid)
    for target in [pid, *tree]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def redis(tmp_path):
    assert REDIS, "redis-server not installed: run scripts/setup-test-services.sh"
    port, password = free_port(), secrets.token_hex(16)
    process = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
                                "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: subprocess.run(["redis-cli", "-p", str(port), "-a", password, "--no-auth-warning", "ping"],
                                    capture_output=True, text=True).stdout.strip() == "PONG", 20, "redis-server")
        yield port, password
    finally:
        process.terminate()
        process.wait(10)


def test_head_restart_keeps_serving_without_redeploy(redis, tmp_path):
    redis_port, password = redis
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    head = LocalCluster(num_cpus=0, extra_args=["--redis-password", password],
                        extra_env={"PYTHONPATH": pythonpath, "RAY_REDIS_ADDRESS": f"127.0.0.1:{redis_port}",
                                   "RAY_external_storage_namespace": f"rsc-test-{redis_port}"})
    backend = FakeBackend("openai").start()
    worker: subprocess.Popen | None = None
    try:
        head.start()
        worker_cmd = [_bin("ray"), "start", "--address", head.address, "--block", "--node-ip-address", WORKER_IP,
                      "--num-cpus", "1", "--disable-usage-stats",
                      "--metrics-export-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
                      "--dashboard-agent-grpc-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]
        # Only the head's GCS uses Redis. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (which pins the head to
        # 127.0.0.1) makes `ray start` refuse to add a worker: the worker keeps Ray's default and an
        # address of its own.
        worker_env = {k: v for k, v in head.env().items() if k not in ("RAY_REDIS_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
        # KubeRay gives workers of a fault-tolerant cluster this long to find the restarted GCS.
        worker_env["RAY_gcs_rpc_server_reconnect_timeout_s"] = "300"
        worker = subprocess.Popen(worker_cmd, env=worker_env, stdout=open(tmp_path / "worker.log", "ab"),
                                  stderr=subprocess.STDOUT, process_group=0)
        http_port, listen_port = free_port(), free_port()
        config = {
            "http_options": {"host": "127.0.0.1", "port": http_port}, "proxy_location": "HeadOnly",
            "applications": [{"name": "router", "route_prefix": "/", "import_path": "serve_apps.router.app:build_router_app",
                              "args": {"router": {"num_cpus": 1, "listen": {"host": WORKER_IP, "port": listen_port}},
                                       "backends": [{"name": "a", "kind": "openai", "url": backend.url,
                                                     "models": ["tiny-chat"]}]}}],
        }
        (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
        # the router needs a CPU: only the worker has one, so Serve places it there once it joins
        head.deploy(tmp_path / "serve.yaml")
        proxy, listener = f"http://127.0.0.1:{http_port}", f"http://{WORKER_IP}:{listen_port}"
        wait(lambda: chat(proxy) == 200 and chat(listener) == 200, 180, "the router app")
        served_before = backend.requests()

        kill_tree(head.process.pid)  # the head pod dies: GCS, raylet, dashboard, Serve controller, proxy
        head.process.wait(10)
        with pytest.raises(httpx.HTTPError):
            chat(proxy)
        # the data plane lives on the worker: the router replica answers while the head is gone
        assert [chat(listener) for _ in range(3)] == [200, 200, 200]

        head.start()  # same GCS port and Redis, as KubeRay restarts the head pod
        wait(lambda: chat(proxy) == 200, 180, "the app behind the new head's proxy")
        status = head.serve_status()
        assert status["applications"]["router"]["status"] == "RUNNING"
        assert chat(listener) == 200
        assert worker.poll() is None  # the worker node survived the head's restart
        assert backend.requests() > served_before
        # no redeploy happened: the app's config is still the one deployed before the restart
        deployed = status["applications"]["router"]["deployed_app_config"]
        assert deployed["args"]["router"]["listen"] == {"host": WORKER_IP, "port": listen_port}
    finally:
        head.stop()
        if worker is not None and worker.poll() is None:
            kill_tree(worker.pid)
            worker.wait(10)
        backend.kill()
