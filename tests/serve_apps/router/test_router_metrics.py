"""The router's Prometheus metrics, scraped by a real Prometheus server (Debian's ``prometheus``,
installed by scripts/setup-test-services.sh) from the Ray node's metrics export port, and read back
through Prometheus' HTTP query API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from launchers.local import free_port
from tests.serve_apps.router.helpers import chat_body, stream

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed: run scripts/setup-test-services.sh")
FAST = {"timeouts": {"connect": 1, "first_byte": 1.5, "idle": 1.5}, "health": {"interval": 0.5, "timeout": 0.5}}


@pytest.fixture
def prometheus(router_cluster, tmp_path):
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [f"127.0.0.1:{router_cluster.metrics_port()}"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def query(prometheus: str, promql: str) -> list[dict]:
    response = httpx.get(prometheus + "/api/v1/query", params={"query": promql}, timeout=5).json()
    assert response["status"] == "success", response
    return response["data"]["result"]


def wait_series(prometheus: str, promql: str, check, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    result: list[dict] = []
    while time.monotonic() < deadline:
        result = query(prometheus, promql)
        if result and check(result):
            return result
        time.sleep(1)
    raise AssertionError(f"{promql}: {result}")


def value(result: list[dict]) -> float:
    return sum(float(series["value"][1]) for series in result)


def serve_traffic(router_cluster, fakes, prometheus: str, app: str) -> tuple[str, object, dict]:
    """Deploy router ``app`` over fakes a (tier 0) and b; send 3 answers, a stream, and one request
    that falls back from a (answering 500) to b. Returns the app's URL, fake a (still failing) and the
    usage of b's one answer."""
    a, b = fakes["a"].ensure(), fakes["b"].ensure()
    backends = [{"name": "a", "kind": "openai", "url": a.url, "models": ["tiny-chat"], "tier": 0, **FAST},
                {"name": "b", "kind": "openai", "url": b.url, "models": ["tiny-chat"], "tier": 1, **FAST}]
    url = router_cluster.deploy({app: {"backends": backends}})[app]
    # every backend has its gauges from the start, before anything has happened to it
    for name in ("a", "b"):
        wait_series(prometheus, f'ray_backend_breaker_state{{application="{app}",backend="{name}"}}', lambda r: value(r) == 0)
        wait_series(prometheus, f'ray_backend_health_status{{application="{app}",backend="{name}"}}', lambda r: value(r) == 1)
    for _ in range(3):
        assert httpx.post(url + "/v1/chat/completions", json=chat_body(), timeout=10).status_code == 200
    assert stream(url, chat_body()).done
    a.control(mode="status", status=500)
    fallback = httpx.post(url + "/v1/chat/completions", json=chat_body(), timeout=10)
    assert fallback.headers["x-fallback-from"] == "a"
    return url, a, fallback.json()["usage"]


def test_router_metrics_reach_prometheus(router_cluster, fakes, prometheus):
    url, a, usage = serve_traffic(router_cluster, fakes, prometheus, "metrics")

    # other router apps of this session also have a backend "a": the application label keeps them apart
    ok = wait_series(prometheus, 'ray_backend_request_count_total{application="metrics",backend="a",status="200"}',
                     lambda r: value(r) >= 4)
    assert value(ok) == 4
    assert {series["metric"]["deployment"] for series in ok} == {"MultiBackendRouter"}
    wait_series(prometheus, 'ray_backend_request_count_total{backend="a",status="500"}', lambda r: value(r) >= 1)
    wait_series(prometheus, 'ray_backend_error_count_total{backend="a",kind="500"}', lambda r: value(r) >= 1)
    wait_series(prometheus, 'ray_backend_fallback_count_total{from="a",to="b"}', lambda r: value(r) >= 1)
    wait_series(prometheus, 'ray_backend_health_status{backend="b"}', lambda r: value(r) == 1)
    wait_series(prometheus, 'ray_backend_breaker_state{backend="a"}', lambda r: len(r) >= 1)
    wait_series(prometheus, 'ray_backend_request_latency_seconds_count{backend="a"}', lambda r: value(r) >= 4)
    wait_series(prometheus, 'ray_backend_ttft_seconds_count{backend="a"}', lambda r: value(r) >= 1)
    # token accounting: exactly the usage b's one answer carried, under the anonymous key and the model
    for kind in ("prompt", "completion"):
        tokens = wait_series(prometheus, f'ray_router_{kind}_tokens_total{{application="metrics",key="anonymous",'
                                         f'model="tiny-chat",backend="b"}}', lambda r: value(r) >= usage[f"{kind}_tokens"])
        assert value(tokens) == usage[f"{kind}_tokens"] > 0
    a.kill()
    wait_series(prometheus, 'ray_backend_health_status{backend="a"}', lambda r: value(r) == 0)


K8S_MONITORING = Path(__file__).resolve().parents[3] / "k8s" / "monitoring"


def test_every_dashboard_query_returns_series(router_cluster, fakes, prometheus):
    """Each PromQL of the Grafana dashboard in k8s/monitoring (and each metric the alerts read) returns
    series from a live router: no panel sits on a metric the router does not export."""
    url, a, _ = serve_traffic(router_cluster, fakes, prometheus, "dashboard")
    a.control(mode="ok", die_after=3, delay=0.01)  # a real death 3 tokens into the stream
    resumed = stream(url, chat_body("resume me", 12))
    assert resumed.done and "resumed on b" in resumed.comments[0]

    dashboard = json.loads((K8S_MONITORING / "dashboard.json").read_text())
    queries = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(queries) >= 10
    for title, expr in queries:
        promql = expr.replace("$application", "dashboard").replace("$__rate_interval", "1m")
        assert "$" not in promql, (title, promql)
        wait_series(prometheus, promql, lambda r: len(r) >= 1, timeout=60)
    rules = yaml.safe_load((K8S_MONITORING / "prometheusrule.yaml").read_text())["spec"]["groups"]
    names = {name for group in rules for rule in group["rules"] for name in re.findall(r"\bray_[a-z_]+", rule["expr"])}
    assert len(names) == 5
    for name in names:
        wait_series(prometheus, f'{name}{{application="dashboard"}}', lambda r: len(r) >= 1, timeout=30)
