"""The router's Prometheus metrics, scraped by a real Prometheus server (Debian's ``prometheus``,
installed by scripts/setup-test-services.sh) from the Ray node's metrics export port, or from the
router's own ``/metrics`` on its listener, and read back through Prometheus' HTTP query API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from launchers.local import free_port
from serve_apps.router.metrics import RAY_PREFIX, SERIES
from tests.serve_apps.router.helpers import chat_body, stream

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed: run scripts/setup-test-services.sh")
FAST = {"timeouts": {"connect": 1, "first_byte": 1.5, "idle": 1.5}, "health": {"interval": 0.5, "timeout": 0.5}}


@contextmanager
def run_prometheus(tmp_path: Path, scrape: dict[str, Any]) -> Iterator[str]:
    """A Prometheus server with one scrape job, every second; yields its URL."""
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": [scrape]}
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


@pytest.fixture
def prometheus(router_cluster, tmp_path):
    """Prometheus scraping the Ray node's metrics export port."""
    targets = [f"127.0.0.1:{router_cluster.metrics_port()}"]
    with run_prometheus(tmp_path, {"job_name": "ray", "static_configs": [{"targets": targets}]}) as url:
        yield url


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


def serve_traffic(router_cluster, fakes, prometheus: str, app: str, options: dict[str, Any] | None = None,
                  headers: dict[str, str] | None = None) -> tuple[str, object, dict]:
    """Deploy router ``app`` (with ``options``) over fakes a (tier 0) and b; send 3 answers, a stream,
    and one request that falls back from a (answering 500) to b. Returns the app's URL, fake a (still
    failing) and the usage of b's one answer."""
    a, b = fakes["a"].ensure(), fakes["b"].ensure()
    backends = [{"name": "a", "kind": "openai", "url": a.url, "models": ["tiny-chat"], "tier": 0, **FAST},
                {"name": "b", "kind": "openai", "url": b.url, "models": ["tiny-chat"], "tier": 1, **FAST}]
    url = router_cluster.deploy({app: {"backends": backends, **(options or {})}})[app]
    # every backend has its gauges from the start, before anything has happened to it
    for name in ("a", "b"):
        wait_series(prometheus, f'ray_backend_breaker_state{{application="{app}",backend="{name}"}}', lambda r: value(r) == 0)
        wait_series(prometheus, f'ray_backend_health_status{{application="{app}",backend="{name}"}}', lambda r: value(r) == 1)
    for _ in range(3):
        assert httpx.post(url + "/v1/chat/completions", json=chat_body(), headers=headers, timeout=10).status_code == 200
    assert stream(url, chat_body(), headers=headers).done
    a.control(mode="status", status=500)
    fallback = httpx.post(url + "/v1/chat/completions", json=chat_body(), headers=headers, timeout=10)
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
                                         f'model="tiny-chat",backend="b"}}', lambda r, kind=kind: value(r) >= usage[f"{kind}_tokens"])
        assert value(tokens) == usage[f"{kind}_tokens"] > 0
    a.kill()
    wait_series(prometheus, 'ray_backend_health_status{backend="a"}', lambda r: value(r) == 0)


K8S_MONITORING = Path(__file__).resolve().parents[3] / "k8s" / "monitoring"


ROUTER_SERIES = tuple(RAY_PREFIX + series.name for series in SERIES)


def assert_dashboard_reads(prometheus: str, app: str, router_only: bool = False) -> None:
    """Each PromQL of the Grafana dashboard in k8s/monitoring (and each metric the alerts read) returns
    series of router ``app``; ``router_only``: the panels on the router's own series (not Serve's)."""
    dashboard = json.loads((K8S_MONITORING / "dashboard.json").read_text())
    queries = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    if router_only:
        queries = [(title, expr) for title, expr in queries
                   if all(name.startswith(ROUTER_SERIES) for name in re.findall(r"\bray_[a-z_]+", expr))]
    assert len(queries) >= 10
    for title, expr in queries:
        promql = expr.replace("$application", app).replace("$__rate_interval", "1m")
        assert "$" not in promql, (title, promql)
        wait_series(prometheus, promql, lambda r: len(r) >= 1, timeout=60)
    rules = yaml.safe_load((K8S_MONITORING / "prometheusrule.yaml").read_text())["spec"]["groups"]
    names = {name for group in rules for rule in group["rules"] for name in re.findall(r"\bray_[a-z_]+", rule["expr"])}
    assert len(names) == 5
    for name in names:
        wait_series(prometheus, f'{name}{{application="{app}"}}', lambda r: len(r) >= 1, timeout=30)


def test_every_dashboard_query_returns_series(router_cluster, fakes, prometheus):
    """No panel sits on a metric the router does not export."""
    url, a, _ = serve_traffic(router_cluster, fakes, prometheus, "dashboard")
    a.control(mode="ok", die_after=3, delay=0.01)  # a real death 3 tokens into the stream
    resumed = stream(url, chat_body("resume me", 12))
    assert resumed.done and "resumed on b" in resumed.comments[0]
    assert_dashboard_reads(prometheus, "dashboard")


def test_the_dashboard_reads_the_routers_own_metrics_route(router_cluster, fakes, tmp_path):
    """Prometheus scrapes nothing but the router's ``/metrics`` on its listener, with the app's client
    key: the same series as Ray's export (names, labels, values), so every panel on the router's series
    and every alert still reads (Serve's own request panel needs Ray's export)."""
    key = "scrape-key-1"
    (tmp_path / "keys").write_text(key + "\n")
    listen = free_port()
    scrape = {"job_name": "router", "metrics_path": "/metrics", "authorization": {"credentials": key},
              "static_configs": [{"targets": [f"127.0.0.1:{listen}"]}]}
    auth = {"Authorization": f"Bearer {key}"}
    options = {"router": {"listen": {"host": "127.0.0.1", "port": listen}}, "auth": {"api_keys": {"file": str(tmp_path / "keys")}}}
    with run_prometheus(tmp_path, scrape) as prometheus:
        url, a, usage = serve_traffic(router_cluster, fakes, prometheus, "ownroute", options, auth)
        ok = wait_series(prometheus, 'ray_backend_request_count_total{job="router",application="ownroute",backend="a",'
                                     'status="200"}', lambda r: value(r) >= 4)
        assert value(ok) == 4 and {series["metric"]["deployment"] for series in ok} == {"MultiBackendRouter"}
        tokens = wait_series(prometheus, 'ray_router_completion_tokens_total{application="ownroute",backend="b"}',
                             lambda r: value(r) >= usage["completion_tokens"])
        assert value(tokens) == usage["completion_tokens"]
        a.control(mode="ok", die_after=3, delay=0.01)
        resumed = stream(url, chat_body("resume me", 12), headers=auth)
        assert resumed.done and "resumed on b" in resumed.comments[0]
        assert_dashboard_reads(prometheus, "ownroute", router_only=True)
