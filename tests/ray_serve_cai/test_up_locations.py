"""`ray-serve-cai up` says where an operator looks: next to `ready:`, the metrics (the router's own
`/metrics` and Ray's export), the dashboard and the logs, and each is really there. A real `up` (its own
Ray cluster) of a router over a stock OpenAI server configured without `models` (the fake backend
process): no engine, so no vLLM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from launchers.local import free_port
from tests.ray_serve_cai.test_up import _read_until_ready
from tests.serve_apps.router.conftest import FakeBackend


def _config(path: Path, listen: int, backend_url: str) -> Path:
    config = {
        "proxy_location": "Disabled",
        "http_options": {"host": "127.0.0.1", "port": free_port()},
        "applications": [{
            "name": "router", "route_prefix": "/", "import_path": "serve_apps.router.app:build_router_app",
            "args": {"router": {"listen": {"host": "127.0.0.1", "port": listen}}, "batch": {"enabled": False},
                     "backends": [{"name": "stock", "kind": "openai", "url": backend_url,
                                   "health": {"interval": 0.5, "timeout": 0.5}}]},
        }],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _lines_after_ready(proc: subprocess.Popen, count: int) -> list[str]:
    return [proc.stdout.readline().strip() for _ in range(count)]


def test_up_prints_where_metrics_dashboard_and_logs_are(tmp_path):
    fake = FakeBackend("openai").start()
    listen = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ray_serve_cai", "up", "--config",
                             str(_config(tmp_path / "up.yaml", listen, fake.url))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready = _read_until_ready(proc, timeout_s=300)
        url = f"http://127.0.0.1:{listen}"
        assert ready.startswith(f"ready: {url}/v1")
        lines = dict(line.split(":", 1) for line in _lines_after_ready(proc, 3))
        assert set(lines) == {"metrics", "dashboard", "logs"}, lines

        metrics = lines["metrics"].split()
        assert metrics[0] == f"{url}/metrics"
        scrape = httpx.get(metrics[0], timeout=10)
        assert scrape.status_code == 200
        assert re.search(r'^ray_backend_health_status\{.*backend="stock".*\} 1\.0$', scrape.text, re.M), scrape.text
        ray_export = next(word.rstrip(":") for word in metrics[1:] if word.startswith("http://"))
        deadline = time.monotonic() + 60  # Ray's agent exports on its own schedule
        while "ray_backend_health_status" not in httpx.get(ray_export, timeout=10).text:
            assert time.monotonic() < deadline, f"no router series on Ray's export {ray_export}"
            time.sleep(1)

        dashboard = lines["dashboard"].strip()
        assert httpx.get(f"{dashboard}/api/version", timeout=10).status_code == 200
        logs = Path(lines["logs"].strip())
        assert logs.is_dir() and any(logs.glob("worker-*.err")) and (logs / "raylet.out").exists()
        # the models of a backend configured without any, as it lists them
        assert [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]] == ["tiny-chat"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        fake.kill()
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
