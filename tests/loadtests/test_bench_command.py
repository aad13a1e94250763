"""``ray-serve-cai bench --only p2 --rounds 1 --tiny`` runs for real (a stock vLLM server, a Ray cluster
with the router) and writes a valid results file, a table and plots; nothing it started survives it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ray_serve_cai.bench.plots import render_all
from ray_serve_cai.bench.results import read_results

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.engine


def processes_with(marker: bytes) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except OSError:
            pass
    return found


def ray_processes() -> set[int]:
    """Processes of loopback clusters started by the launcher (their temp dirs are named rsc-ray-*)."""
    return processes_with(b"/tmp/rsc-ray-")


def test_bench_p2_tiny_writes_valid_results_and_plots(tmp_path):
    ray_before, vllm_before = ray_processes(), vllm_servers()
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "ray_serve_cai", "bench", "--only", "p2", "--rounds", "1", "--tiny",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = out.glob("*.json")
    results = read_results(path)  # the pydantic model of the format: the file is valid
    assert path.name == f"{results.stem()}.json" and results.finished is not None
    [record] = results.benchmarks
    assert record.name == "p2" and record.status == "ok" and record.settings.tiny
    rows = {row.target: row for row in record.output.rows}
    assert set(rows) == {"direct", "router", "router-serve"}
    for row in rows.values():
        assert row.metrics["c64_rps"] > 0 and row.metrics["c1_median_ms"] > 0 and row.latencies_ms
    assert {h.metric for h in record.output.headlines} >= {"router listener added latency c=1",
                                                          "router listener throughput c=64 / direct"}
    memory = {m.process: m.peak_rss_mib for m in record.memory}
    assert memory["stock vLLM server"] > 200 and 50 < memory["router replica"] < 1000
    assert "serve controller" in memory
    # whatever the benchmark's own cleanup missed, the runner killed: no process of its cluster is left
    assert not ray_processes() - ray_before and not vllm_servers() - vllm_before, record.leftovers_killed
    table = (out / f"{results.stem()}.md").read_text()
    assert "| p2 | 1 (tiny) | router listener added latency c=1 |" in table and table in done.stdout
    assert [p.name for p in render_all(results, tmp_path)] == [f"{results.stem()}-latency-cdf.png"]


def vllm_servers() -> set[int]:
    return processes_with(b"vllm.entrypoints.openai.api_server")


def test_sigterm_mid_benchmark_stops_it_and_everything_it_started(tmp_path):
    """SIGTERM (what Ctrl-C does in a terminal) while the benchmark starts its vLLM server: exit 130, the
    results file says interrupted, and the server is gone."""
    import signal
    import time

    before = vllm_servers()
    out = tmp_path / "results"
    cli = subprocess.Popen([sys.executable, "-m", "ray_serve_cai", "bench", "--only", "p2", "p3", "--rounds", "1",
                            "--tiny", "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    seen = []
    try:
        for line in cli.stderr:
            seen.append(line)
            if "starting a stock vLLM server" in line:
                break
        deadline = time.monotonic() + 120
        while not vllm_servers() - before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert vllm_servers() - before, "".join(seen)
        cli.send_signal(signal.SIGTERM)
        rest = cli.communicate(timeout=300)[1]
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130, rest[-2000:]
    [record] = read_results(next(out.glob("*.json"))).benchmarks  # p3 never started
    assert record.name == "p2" and record.status == "interrupted"
    assert not vllm_servers() - before
