"""Observability beyond the router (k8s/monitoring: prometheusrule-cluster.yaml, cluster-dashboard.json):
every Ray metric the dashboard and the alerts read is one the installed Ray defines. (promtool checks
and unit-tests these alerts in test_kuberay_monitoring.py, alongside the router's.)

Names are checked against Ray's own metric definitions (the strings its Gauge/Counter/Histogram
objects are created with, exported with the `ray_` prefix, counters with `_total`), not against a live
scrape: starting a Ray cluster with Serve is left to tests/serve_apps/router/test_router_metrics.py,
which scrapes the router dashboard's series."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import ray
import yaml
from test_kuberay_monitoring import MONITORING

# The KubeRay operator's metrics (ray-operator/pkg/features/metrics, KubeRay >= 1.4): not in Ray's sources.
KUBERAY_METRICS = {"kuberay_service_condition_ready"}


@functools.cache
def ray_metric_definitions() -> frozenset[str]:
    """Names Ray's Python sources create metrics with (Gauge/Counter/Histogram first arguments and the
    reporter's metric tables), without the `ray_` prefix."""
    names: set[str] = set()
    pattern = re.compile(r'(?:Gauge|Counter|Histogram|Sum)\(\s*(?:name=)?"([a-z][a-z0-9_]+)"', re.S)
    for path in Path(ray.__file__).parent.rglob("*.py"):
        if "/tests/" in str(path):
            continue
        names.update(pattern.findall(path.read_text(errors="ignore")))
    return frozenset(names)


def exported_by_ray(name: str) -> bool:
    """``name`` as Prometheus sees it: a gauge's own name, a counter's with _total, a histogram's series."""
    base = name.removeprefix("ray_")
    candidates = {base, re.sub(r"_(total|bucket|sum|count)$", "", base)}
    return name.startswith("ray_") and bool(candidates & ray_metric_definitions())


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:ray|kuberay)_[a-z_]+)", expr))


def cluster_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "cluster-dashboard.json").read_text())
    rules = yaml.safe_load((MONITORING / "prometheusrule-cluster.yaml").read_text())["spec"]["groups"]
    return ([target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
            + [rule["expr"] for group in rules for rule in group["rules"]])


def test_every_ray_metric_read_is_one_ray_defines():
    names = {name for expr in cluster_queries() for name in metric_names(expr)}
    assert {"ray_serve_deployment_replica_healthy", "ray_node_mem_used", "ray_component_rss_mb",
            "ray_serve_deployment_request_counter_total", "ray_serve_deployment_processing_latency_ms_bucket"} <= names
    unknown = sorted(n for n in names - KUBERAY_METRICS if not exported_by_ray(n))
    assert unknown == []


def test_the_name_check_can_fail():
    """The seed's names (seed 004, "Key Metrics to Monitor") are not metrics Ray 2.60 defines."""
    for name in ("ray_node_alive", "ray_gcs_memory_mb", "ray_cluster_active_tasks"):
        assert not exported_by_ray(name), name
    assert exported_by_ray("ray_serve_deployment_request_counter_total") and exported_by_ray("ray_node_mem_total")


def test_cluster_dashboard_shape_and_configmap(rendered):
    dashboard = json.loads((MONITORING / "cluster-dashboard.json").read_text())
    titles = " | ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("nodes alive", "gcs memory", "serve requests by deployment", "latency", "errors", "healthy serve replicas",
                  "scrape targets"):
        assert topic in titles
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for panel in dashboard["panels"])
    for env in ("prod", "kcl1-prod"):
        configmap = rendered[env].one("ConfigMap", "ray-serve-cai-cluster-dashboard")
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(configmap["data"]["ray-serve-cai-cluster.json"]) == dashboard
        assert rendered[env].one("PrometheusRule", "ray-serve-cai-cluster")


def test_scrape_alerts_name_the_metrics_service(rendered):
    """Prometheus-operator sets `job` to the scraped Service's name."""
    service = rendered["prod"].one("Service", "ray-serve-cai-metrics")["metadata"]["name"]
    assert all(f'job="{service}"' in expr for expr in cluster_queries() if "up{" in expr)
