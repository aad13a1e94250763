"""The monitoring component: alerts checked and unit-tested by promtool (Debian's `prometheus`
package, installed by scripts/setup-test-services.sh), the dashboard's structure. The dashboard's
PromQL runs against a live router in tests/serve_apps/router/test_router_metrics.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kube_schemas import ROOT

MONITORING = ROOT / "k8s" / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed: run scripts/setup-test-services.sh")
ALERTS = {"RouterBackendDown", "RouterErrorRateHigh", "RouterTTFTHigh", "RouterAllBreakersOpen"}
CLUSTER_ALERTS = {"ServeReplicaUnhealthy", "RayServiceNotReady", "RayMetricsTargetDown", "RayMetricsMissing"}


def rules_file(tmp_path: Path, source: str = "prometheusrule.yaml", name: str = "rules.yaml") -> Path:
    """The PrometheusRule's spec as a plain Prometheus rules file (what promtool reads)."""
    rule = yaml.safe_load((MONITORING / source).read_text())
    path = tmp_path / name
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def promtool_unit_tests(tmp_path: Path, tests: str, alerts: set[str]) -> None:
    """Run promtool's unit tests ``tests`` (next to this file); they must cover exactly ``alerts``."""
    shutil.copy(Path(__file__).with_name(tests), tmp_path / tests)
    tested = {case["alertname"] for test in yaml.safe_load((tmp_path / tests).read_text())["tests"]
              for case in test["alert_rule_test"]}
    assert tested == alerts
    done = subprocess.run([PROMTOOL, "test", "rules", tests], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# (PrometheusRule file, the rules file its unit tests name, the unit tests, the alerts they cover): the
# router's alerts and the cluster's (Serve replicas, RayService readiness, scrapes).
RULE_FILES = [
    ("prometheusrule.yaml", "rules.yaml", "alerts_test.yaml", ALERTS),
    ("prometheusrule-cluster.yaml", "rules-cluster.yaml", "alerts_cluster_test.yaml", CLUSTER_ALERTS),
]


@needs_promtool
@pytest.mark.parametrize("source, name, tests, alerts", RULE_FILES)
def test_alert_rules_are_valid(tmp_path, source, name, tests, alerts):
    done = subprocess.run([PROMTOOL, "check", "rules", str(rules_file(tmp_path, source, name))], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts)} rules found" in done.stdout


@needs_promtool
@pytest.mark.parametrize("source, name, tests, alerts", RULE_FILES)
def test_each_alert_fires_on_its_case_and_not_on_its_near_miss(tmp_path, source, name, tests, alerts):
    rules_file(tmp_path, source, name)
    promtool_unit_tests(tmp_path, tests, alerts)


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path):
    """A broken threshold is caught: the TTFT alert at 3 s no longer fires on the 2.425 s case."""
    path = rules_file(tmp_path)
    path.write_text(path.read_text().replace(") > 2", ") > 3"))
    shutil.copy(Path(__file__).with_name("alerts_test.yaml"), tmp_path / "alerts_test.yaml")
    done = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0 and "RouterTTFTHigh" in done.stdout + done.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target."""
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_covers_what_operators_watch():
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    titles = " | ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("request rate", "p50 / p95 / p99", "time to first token", "backend health", "circuit breaker",
                  "fallbacks", "resumes", "errors", "error ratio"):
        assert topic in titles
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and panel["targets"]
    metrics = {name for _, expr in dashboard_queries() for name in re.findall(r"\bray_[a-z_]+", expr)}
    assert {"ray_backend_request_count_total", "ray_backend_ttft_seconds_bucket", "ray_backend_health_status",
            "ray_backend_breaker_state", "ray_backend_fallback_count_total", "ray_backend_stream_resume_count_total",
            "ray_backend_error_count_total", "ray_backend_request_latency_seconds_bucket"} <= metrics


def test_dashboard_ships_in_the_rendered_configmap(rendered):
    configmap = rendered["prod"].one("ConfigMap", "ray-serve-cai-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["ray-serve-cai.json"]) == json.loads((MONITORING / "dashboard.json").read_text())
