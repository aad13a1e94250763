"""The router replica's log reaches its file within seconds and survives a SIGKILL of the replica, with
Serve's request-path log buffer on (``RAY_SERVE_THROUGHPUT_OPTIMIZED``, as every shipped serve config
runs): Serve holds up to 1,000 records below ERROR in memory, and serve_apps/logflush.py flushes them
every second. Without the flusher the warnings below never reach the file."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from launchers.local import free_port
from tests.serve_apps.router.helpers import chat_body, wait_for

APP = "logs"
FAILED = "backend nowhere failed (connect); falling back"


def replica_log(logs_dir: Path) -> Path | None:
    found = sorted((logs_dir / "serve").glob(f"replica_{APP}_MultiBackendRouter_*.log"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def replica_pids() -> list[int]:
    wanted = f"ServeReplica:{APP}:MultiBackendRouter".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if wanted in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def failures_logged(logs_dir: Path) -> int:
    path = replica_log(logs_dir)
    return path.read_text(errors="replace").count(FAILED) if path else 0


def test_warnings_reach_the_replica_log_within_seconds_and_survive_a_sigkill(router_cluster):
    nowhere = {"name": "nowhere", "kind": "openai", "url": f"http://127.0.0.1:{free_port()}", "models": ["m"],
               "health": {"interval": 60}}  # no probe marks it down first: each request tries it and logs why
    standby = {"name": "standby", "kind": "openai", "url": f"http://127.0.0.1:{free_port()}", "models": ["m"],
               "health": {"interval": 60}}
    base = router_cluster.base_apps
    try:
        url = deploy_buffered(router_cluster, {APP: {"backends": [nowhere, standby], "batch": {"enabled": False}}})
        logs = router_cluster.cluster.logs_dir
        before = failures_logged(logs)
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body(model="m"), timeout=30).status_code in (502, 503)
        wait_for(lambda: failures_logged(logs) > before, timeout=5, message="the warning in the replica's log file")

        # a warning logged 2 s before the replica is SIGKILLed is in the file afterwards
        logged = failures_logged(logs)
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body(model="m"), timeout=30).status_code in (502, 503)
        time.sleep(2)
        [pid] = replica_pids()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(p == pid for p in replica_pids()), timeout=10, message="the replica gone")
        assert failures_logged(logs) > logged
    finally:
        router_cluster.base_apps = base


def deploy_buffered(router_cluster, apps: dict) -> str:
    """``router_cluster.deploy`` with the app's replicas under RAY_SERVE_THROUGHPUT_OPTIMIZED."""
    env = {"runtime_env": {"env_vars": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}}}
    router_cluster.base_apps = [{"name": name, "route_prefix": f"/{name}",
                                 "import_path": "serve_apps.router.app:build_router_app", "args": args, **env}
                                for name, args in apps.items()]
    # deploy() appends the apps it is given to base_apps: give it none, then wait for the route
    router_cluster.deploy({})
    url = f"{router_cluster.base_url}/{APP}"
    wait_for(lambda: _healthy(url), timeout=120, message=f"{url}/health")
    return url


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
