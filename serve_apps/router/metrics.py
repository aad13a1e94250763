"""Prometheus metrics of the router: exported through Ray's metrics agent, and served by the router
itself at ``GET /metrics``.

Two exports of the same series, each defined once in ``SERIES``:

- Ray's metrics agent (``ray.serve.metrics``): every replica's series on the node's metrics export
  port (``ray start --metrics-export-port``), which is what a KubeRay ServiceMonitor scrapes. Ray
  prefixes custom metric names with ``ray_`` on export, e.g.
  ``ray_backend_request_count_total{backend="vllm",status="200"}``, and Serve's metric classes add
  ``application``, ``deployment`` and ``replica`` labels, so two router apps with a backend of the
  same name stay apart.
- the router's own ``/metrics`` (``exposition()``): a ``prometheus_client`` registry of this replica,
  under the very names and labels Ray exports (``ray_`` prefix; ``application``, ``deployment`` and
  ``replica`` inside a Serve replica), so the dashboard and alerts in ``k8s/monitoring`` read either.
  Ray's custom metrics never pass through ``prometheus_client`` (they go to the agent from C++),
  hence a registry of the router's own. A scrape of ``/metrics`` reaches one replica: with one router
  replica (``ray-serve-cai up``) it is the whole picture; with several, scrape Ray's export port.

Outside a Ray worker (unit use of the router core) every Ray call is a no-op; the ``/metrics``
registry always records. Token usage and fail-open decisions are also kept as plain numbers
(``tokens_used``, ``fail_open_count``): the replica's own totals, what in-process callers can read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

logger = logging.getLogger("ray.serve")

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
RAY_PREFIX = "ray_"  # what Ray's export puts before a custom metric's name
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # Prometheus text format, what ``exposition()`` writes
SERVE_LABELS = ("application", "deployment", "replica")


@dataclass(frozen=True, slots=True)
class Series:
    """One metric: ``attr`` is how ``RouterMetrics`` refers to it, ``name`` is Ray's (unprefixed) name."""

    attr: str
    kind: Literal["counter", "gauge", "histogram"]
    name: str
    help: str
    labels: tuple[str, ...] = ()


SERIES = (
    Series("health", "gauge", "backend_health_status", "1 if the backend's last health probe passed, else 0", ("backend",)),
    Series("requests", "counter", "backend_request_count", "Requests answered by a backend, by HTTP status",
           ("backend", "status")),
    Series("errors", "counter", "backend_error_count", "Backend failures (connect, timeout, disconnect, 5xx, 429)",
           ("backend", "kind")),
    Series("latency", "histogram", "backend_request_latency_seconds", "Backend request latency until the last byte",
           ("backend",)),
    Series("ttft", "histogram", "backend_ttft_seconds", "Streaming: time to the first body bytes from the backend",
           ("backend",)),
    Series("fallbacks", "counter", "backend_fallback_count", "Requests moved from one backend to another", ("from", "to")),
    Series("resumes", "counter", "backend_stream_resume_count", "Streams continued on another backend after the first byte",
           ("from", "to")),
    Series("breaker", "gauge", "backend_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ("backend",)),
    Series("prompt_tokens", "counter", "router_prompt_tokens", "Prompt tokens of answered requests, from the backends' usage",
           ("key", "model", "backend")),
    Series("completion_tokens", "counter", "router_completion_tokens",
           "Completion tokens of answered requests, from the backends' usage", ("key", "model", "backend")),
    Series("rate_limits", "counter", "router_rate_limited_count", "Requests refused with 429 by a key's limit", ("key", "limit")),
    Series("fail_opens", "counter", "router_ratelimit_fail_open_count",
           "Requests admitted without a limit check: the shared store was down"),
    Series("affinity_choices", "counter", "backend_affinity_count",
           "routing prefix_affinity: replica choices by outcome (hit, miss, spill)", ("backend", "outcome")),
)
# method of a series' kind that takes a value: Ray's and prometheus_client's classes share these names
_RECORD = {"counter": "inc", "gauge": "set", "histogram": "observe"}


class Exposition:
    """The registry as a scrape sees it: the Serve labels added to every sample, and without the
    ``*_created`` samples ``prometheus_client`` adds (Ray's export has none)."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        self._registry = registry
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            metric.samples = [s._replace(labels={**self._labels, **s.labels})
                              for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def _ray_metric(metrics: Any, series: Series) -> Any:
    if series.kind == "histogram":
        return metrics.Histogram(series.name, series.help, LATENCY_BUCKETS, series.labels)
    cls = metrics.Counter if series.kind == "counter" else metrics.Gauge
    return cls(series.name, series.help, series.labels)


def _local_metric(registry: CollectorRegistry, series: Series) -> Any:
    name = RAY_PREFIX + series.name
    if series.kind == "histogram":
        return Histogram(name, series.help, series.labels, registry=registry, buckets=LATENCY_BUCKETS)
    cls = Counter if series.kind == "counter" else Gauge
    return cls(name, series.help, series.labels, registry=registry)


def _serve_labels() -> dict[str, str]:
    """``application``, ``deployment``, ``replica`` as Ray's export labels this replica's series
    (nothing outside a Serve replica)."""
    try:
        from ray.serve.metrics import _add_serve_metric_default_tags

        tags = _add_serve_metric_default_tags({})
    except Exception:  # not in a replica, or Ray moved its helper: the series stay unlabelled
        return {}
    return {k: str(v) for k, v in tags.items() if k in SERVE_LABELS}


class RouterMetrics:
    def __init__(self) -> None:
        self.tokens_used: dict[tuple[str, str, str], list[int]] = {}  # (key, model, backend) -> [prompt, completion]
        self.fail_open_count = 0
        self._series = {series.attr: series for series in SERIES}
        registry = CollectorRegistry()
        self._local = {series.attr: _local_metric(registry, series) for series in SERIES}
        # (attr, label values) -> the registry's child: labels() costs ~3 us a call, a lookup here ~0.3
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._exposition = Exposition(registry, _serve_labels())
        self._ray: dict[str, Any] = {}
        try:
            import ray
            from ray.serve import metrics  # adds application / deployment / replica labels
        except ImportError:  # pragma: no cover - ray is a core dependency
            return
        if ray.is_initialized():
            self._ray = {series.attr: _ray_metric(metrics, series) for series in SERIES}

    def exposition(self) -> bytes:
        """This replica's series in Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self._exposition)

    def _call(self, metric: str, value: float, tags: dict[str, str]) -> None:
        method = _RECORD[self._series[metric].kind]
        try:  # metrics must never fail a request
            key = (metric, tuple(tags.values()))  # every caller names the labels in the same order
            child = self._children.get(key)
            if child is None:
                local = self._local[metric]
                child = self._children[key] = local.labels(**tags) if tags else local
            getattr(child, method)(value)
            if self._ray:
                getattr(self._ray[metric], method)(value, tags=tags)
        except Exception as exc:
            logger.debug("metric %s failed: %s", metric, exc)

    def request(self, backend: str, status: int, latency: float | None) -> None:
        self._call("requests", 1, {"backend": backend, "status": str(status)})
        if latency is not None:
            self._call("latency", latency, {"backend": backend})

    def first_byte(self, backend: str, seconds: float) -> None:
        self._call("ttft", seconds, {"backend": backend})

    def error(self, backend: str, kind: str) -> None:
        self._call("errors", 1, {"backend": backend, "kind": kind})

    def fallback(self, source: str, target: str) -> None:
        self._call("fallbacks", 1, {"from": source, "to": target})

    def resume(self, source: str, target: str) -> None:
        self._call("resumes", 1, {"from": source, "to": target})

    def set_health(self, backend: str, healthy: bool) -> None:
        self._call("health", 1 if healthy else 0, {"backend": backend})

    def set_breaker(self, backend: str, state: Any) -> None:
        self._call("breaker", int(state), {"backend": backend})

    def tokens(self, key: str, model: str, backend: str, prompt: int, completion: int) -> None:
        totals = self.tokens_used.get((key, model, backend))
        if totals is None:
            totals = self.tokens_used[(key, model, backend)] = [0, 0]
        totals[0] += prompt
        totals[1] += completion
        tags = {"key": key, "model": model, "backend": backend}
        if prompt > 0:  # Ray's counters refuse an increment of 0
            self._call("prompt_tokens", prompt, tags)
        if completion > 0:
            self._call("completion_tokens", completion, tags)

    def rate_limited(self, key: str, limit: str) -> None:
        self._call("rate_limits", 1, {"key": key, "limit": limit})

    def fail_open(self) -> None:
        self.fail_open_count += 1
        self._call("fail_opens", 1, {})

    def affinity(self, backend: str, outcome: str) -> None:
        self._call("affinity_choices", 1, {"backend": backend, "outcome": outcome})
