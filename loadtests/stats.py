"""Summaries of measured latencies: median/p99, quantiles, and a CDF sample small enough to store."""

from __future__ import annotations

import statistics
from typing import Any


def cdf_sample(latencies: list[float], points: int = 200) -> list[float]:
    """``points`` evenly spaced order statistics of ``latencies`` (s) in ms: the distribution's shape for a
    CDF plot without storing every request."""
    ordered = sorted(latencies)
    if len(ordered) <= points:
        return [round(x * 1000, 3) for x in ordered]
    return [round(ordered[round(i * (len(ordered) - 1) / (points - 1))] * 1000, 3) for i in range(points)]


def latency_summary(latencies: list[float], errors: int) -> dict[str, Any]:
    """Count, errors, median and p99 (ms) of request latencies (s), and their CDF sample."""
    return {"requests": len(latencies), "errors": errors,
            "median_ms": statistics.median(latencies) * 1000 if latencies else None,
            "p99_ms": sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000 if latencies else None,
            "cdf_ms": cdf_sample(latencies)}


def quantile_ms(ordered: list[float], q: float) -> float | None:
    """The ``q`` quantile (lower order statistic) of sorted latencies in s, in ms; None when empty."""
    return ordered[int(q * (len(ordered) - 1))] * 1000 if ordered else None

