"""PNG plots of a results file (matplotlib, the ``bench`` extra): latency CDF per target, throughput
and TTFT against concurrency for the three servers, and the failover timeline around the kill."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from ray_serve_cai.bench.results import BenchmarkRecord, BenchResults


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _plain_ticks(axis) -> None:
    from matplotlib.ticker import ScalarFormatter

    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)


def _save(plt, fig, title: str, path: Path) -> Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _ok(results: BenchResults, name: str | None = None) -> list[BenchmarkRecord]:
    return [r for r in results.benchmarks if r.status == "ok" and r.output is not None
            and (name is None or r.name == name)]


def latency_cdf(results: BenchResults, path: Path) -> Path | None:
    panels = [(r, defaultdict(list)) for r in _ok(results)]
    for record, by_target in panels:
        for row in record.output.rows:
            by_target[row.target].extend(row.latencies_ms)
    panels = [(r, t) for r, t in panels if any(t.values())]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), squeeze=False)
    for ax, (record, by_target) in zip(axes[:, 0], panels, strict=False):
        for target, values in sorted(by_target.items()):
            if values:
                ordered = sorted(values)
                ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=target)
        ax.set_xscale("log")
        _plain_ticks(ax.xaxis)
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{record.name}: {record.title}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, f"Latency CDF, {results.stem()}", path)


def scaling(results: BenchResults, path: Path) -> Path | None:
    records = _ok(results, "scaling")
    if not records:
        return None
    cells: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for row in records[-1].output.rows:
        if "concurrency" in row.metrics and row.metrics.get("rps") is not None:
            cells[row.target][int(row.metrics["concurrency"])].append(row.metrics)
    if not cells:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for target, by_c in sorted(cells.items()):
        levels = sorted(by_c)
        med = lambda key, c, by_c=by_c: statistics.median(m[key] for m in by_c[c] if m.get(key) is not None)  # noqa: E731
        left.plot(levels, [med("rps", c) for c in levels], marker="o", label=target)
        line, = right.plot(levels, [med("ttft_p50_ms", c) for c in levels], marker="o", label=f"{target} p50")
        right.plot(levels, [med("ttft_p95_ms", c) for c in levels], marker="x", linestyle="--",
                   color=line.get_color(), label=f"{target} p95")
    for ax, label in ((left, "requests/s (median of rounds)"), (right, "TTFT ms (median of rounds, log)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    right.set_yscale("log")
    _plain_ticks(right.yaxis)
    from matplotlib.ticker import NullLocator

    levels = sorted({c for by_c in cells.values() for c in by_c})
    for ax in (left, right):  # the measured levels as plain numbers on the log axis
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.xaxis.set_minor_locator(NullLocator())
    return _save(plt, fig, f"Throughput and TTFT vs concurrency, {results.stem()}", path)


def failover_timeline(results: BenchResults, path: Path) -> Path | None:
    records = [r for r in _ok(results) if r.output.timeline]
    if not records:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(records), 1, figsize=(9, 3.2 * len(records)), squeeze=False)
    for ax, record in zip(axes[:, 0], records, strict=False):
        points = record.output.timeline
        # a bar covers its second [t, t + 1): the kill line falls inside the second it happened in
        ax.bar([p.t for p in points], [p.requests - p.errors for p in points], width=0.9, align="edge",
               label="answered/s")
        ax.bar([p.t for p in points], [p.errors for p in points], width=0.9, align="edge",
               bottom=[p.requests - p.errors for p in points], color="tab:red", label="errors/s")
        for event, at in record.output.events.items():
            ax.axvline(at, color="black", linestyle="--")
            ax.annotate(event, (at, ax.get_ylim()[1] * 0.9), fontsize=8, xytext=(4, 0), textcoords="offset points")
        ax.set_xlabel("seconds since start (by request start)")
        ax.set_ylabel("requests per second")
        ax.set_title(f"{record.name}: {record.title}", fontsize=9)
        ax.legend(fontsize=8)
    return _save(plt, fig, f"Failover timeline, {results.stem()}", path)


def render_all(results: BenchResults, out_dir: Path) -> list[Path]:
    """Every plot the results allow, as ``<date>-<commit>-<plot>.png``; plots without data are skipped."""
    stem = results.stem()
    made = [latency_cdf(results, out_dir / f"{stem}-latency-cdf.png"),
            scaling(results, out_dir / f"{stem}-scaling.png"),
            failover_timeline(results, out_dir / f"{stem}-failover.png")]
    return [p for p in made if p is not None]
