"""Prometheus metrics of the router, exported through Ray's metrics agent.

Why Ray's metrics and not a ``/metrics`` route: a router deployment has many replicas behind one proxy,
so a scrape of a route would hit a random replica. Ray aggregates every replica's series on the node's
metrics export port (``ray start --metrics-export-port``), which is what Prometheus / a KubeRay
ServiceMonitor scrape. Ray prefixes custom metric names with ``ray_`` on export, e.g.
``ray_backend_request_count_total{backend="vllm",status="200"}``. Inside a Serve replica every series also
carries ``application``, ``deployment`` and ``replica`` labels (Serve's metric classes add them), so
two router apps with a backend of the same name stay apart.

Outside a Ray worker (unit use of the router core) every Ray call is a no-op. Token usage and
fail-open decisions are also kept in process (``tokens_used``, ``fail_open_count``): the replica's
own totals, cheap to keep, and what in-process callers can read.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("ray.serve")

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


class RouterMetrics:
    def __init__(self) -> None:
        self._enabled = False
        self.tokens_used: dict[tuple[str, str, str], list[int]] = {}  # (key, model, backend) -> [prompt, completion]
        self.fail_open_count = 0
        try:
            import ray
            from ray.serve import metrics  # adds application / deployment / replica labels

            self._enabled = ray.is_initialized()
        except ImportError:  # pragma: no cover - ray is a core dependency
            return
        if not self._enabled:
            return
        self.health = metrics.Gauge(
            "backend_health_status", "1 if the backend's last health probe passed, else 0", ("backend",)
        )
        self.requests = metrics.Counter(
            "backend_request_count", "Requests answered by a backend, by HTTP status", ("backend", "status")
        )
        self.errors = metrics.Counter(
            "backend_error_count", "Backend failures (connect, timeout, disconnect, 5xx, 429)", ("backend", "kind")
        )
        self.latency = metrics.Histogram(
            "backend_request_latency_seconds", "Backend request latency until the last byte",
            LATENCY_BUCKETS, ("backend",),
        )
        self.ttft = metrics.Histogram(
            "backend_ttft_seconds", "Streaming: time to the first body bytes from the backend",
            LATENCY_BUCKETS, ("backend",),
        )
        self.fallbacks = metrics.Counter(
            "backend_fallback_count", "Requests moved from one backend to another", ("from", "to")
        )
        self.resumes = metrics.Counter(
            "backend_stream_resume_count", "Streams continued on another backend after the first byte",
            ("from", "to"),
        )
        self.breaker = metrics.Gauge(
            "backend_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ("backend",)
        )
        self.prompt_tokens = metrics.Counter(
            "router_prompt_tokens", "Prompt tokens of answered requests, from the backends' usage",
            ("key", "model", "backend"),
        )
        self.completion_tokens = metrics.Counter(
            "router_completion_tokens", "Completion tokens of answered requests, from the backends' usage",
            ("key", "model", "backend"),
        )
        self.rate_limits = metrics.Counter(
            "router_rate_limited_count", "Requests refused with 429 by a key's limit", ("key", "limit")
        )
        self.fail_opens = metrics.Counter(
            "router_ratelimit_fail_open_count", "Requests admitted without a limit check: the shared store was down",
        )
        self.affinity_choices = metrics.Counter(
            "backend_affinity_count", "routing prefix_affinity: replica choices by outcome (hit, miss, spill)",
            ("backend", "outcome"),
        )

    def _call(self, metric: str, method: str, value: float, tags: dict[str, str]) -> None:
        if self._enabled:
            try:
                getattr(getattr(self, metric), method)(value, tags=tags)
            except Exception as exc:  # metrics must never fail a request
                logger.debug("metric %s failed: %s", metric, exc)

    def request(self, backend: str, status: int, latency: float | None) -> None:
        self._call("requests", "inc", 1, {"backend": backend, "status": str(status)})
        if latency is not None:
            self._call("latency", "observe", latency, {"backend": backend})

    def first_byte(self, backend: str, seconds: float) -> None:
        self._call("ttft", "observe", seconds, {"backend": backend})

    def error(self, backend: str, kind: str) -> None:
        self._call("errors", "inc", 1, {"backend": backend, "kind": kind})

    def fallback(self, source: str, target: str) -> None:
        self._call("fallbacks", "inc", 1, {"from": source, "to": target})

    def resume(self, source: str, target: str) -> None:
        self._call("resumes", "inc", 1, {"from": source, "to": target})

    def set_health(self, backend: str, healthy: bool) -> None:
        self._call("health", "set", 1 if healthy else 0, {"backend": backend})

    def set_breaker(self, backend: str, state: Any) -> None:
        self._call("breaker", "set", int(state), {"backend": backend})

    def tokens(self, key: str, model: str, backend: str, prompt: int, completion: int) -> None:
        totals = self.tokens_used.get((key, model, backend))
        if totals is None:
            totals = self.tokens_used[(key, model, backend)] = [0, 0]
        totals[0] += prompt
        totals[1] += completion
        tags = {"key": key, "model": model, "backend": backend}
        if prompt > 0:  # Ray's counters refuse an increment of 0
            self._call("prompt_tokens", "inc", prompt, tags)
        if completion > 0:
            self._call("completion_tokens", "inc", completion, tags)

    def rate_limited(self, key: str, limit: str) -> None:
        self._call("rate_limits", "inc", 1, {"key": key, "limit": limit})

    def fail_open(self) -> None:
        self.fail_open_count += 1
        self._call("fail_opens", "inc", 1, {})

    def affinity(self, backend: str, outcome: str) -> None:
        self._call("affinity_choices", "inc", 1, {"backend": backend, "outcome": outcome})
