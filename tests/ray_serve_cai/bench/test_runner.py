"""The runner with real child processes: it records rows and peak memory, kills what a benchmark left
behind, stops a benchmark over its budget, and reports missing and failing benchmarks by name."""

from __future__ import annotations

from pathlib import Path

from ray_serve_cai.bench.procs import _read
from ray_serve_cai.bench.registry import Benchmark
from ray_serve_cai.bench.results import read_results
from ray_serve_cai.bench.runner import Runner

ROOT = Path(__file__).resolve().parents[3]
FNS = "tests.ray_serve_cai.bench.benchfns"


def bench(name: str, target: str) -> Benchmark:
    return Benchmark(name, f"{name} title", "baseline", target, budget_s=60)


def run(tmp_path: Path, *benchmarks: Benchmark, budget: float | None = None):
    lines: list[str] = []
    runner = Runner(ROOT, tmp_path, rounds=2, tiny=True, budget_s=budget, log=lines.append)
    path = runner.run(list(benchmarks))
    return read_results(path), lines


def test_rows_memory_and_leftovers(tmp_path):
    results, lines = run(tmp_path, bench("ok", f"{FNS}:leaves_a_server_behind"))
    [record] = results.benchmarks
    assert record.status == "ok", record.error
    assert [r.round for r in record.output.rows] == [0, 1]
    assert record.leftovers_killed == ["sleep 301"]
    driver = {m.process: m for m in record.memory}["benchmark driver"]
    assert driver.peak_rss_mib > 40 and driver.largest_mib == driver.peak_rss_mib  # one driver, its tree
    assert any("killed 1 leftover" in line for line in lines)
    assert results.finished is not None and results.machine.cores >= 1


def test_budget_stops_a_hung_benchmark_and_everything_it_started(tmp_path):
    results, _ = run(tmp_path, bench("slow", f"{FNS}:hangs"), budget=4)
    [record] = results.benchmarks
    assert record.status == "timeout" and record.seconds < 30
    assert record.error.startswith("timeout after")


def test_missing_and_failing_benchmarks_are_named_and_the_run_goes_on(tmp_path):
    results, _ = run(tmp_path, bench("p1", "loadtests.no_such_bench:run"), bench("bad", f"{FNS}:breaks"),
                     bench("ok", f"{FNS}:leaves_a_server_behind"))
    missing, bad, ok = results.benchmarks
    assert missing.status == "missing" and "loadtests.no_such_bench is missing" in missing.error
    assert bad.status == "failed" and bad.error == "RuntimeError: the backend never came up"
    assert ok.status == "ok"


def alive(cmdline: str) -> list[int]:
    procs = (_read(entry) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [p.pid for p in procs if p is not None and p.cmdline.strip() == cmdline]


def test_no_process_a_benchmark_started_survives_it(tmp_path):
    results, _ = run(tmp_path, bench("ok", f"{FNS}:leaves_a_server_behind"), bench("slow", f"{FNS}:hangs"), budget=12)
    assert [r.status for r in results.benchmarks] == ["ok", "timeout"]
    assert alive("sleep 301") == [] and alive("sleep 302") == []


def test_a_later_run_of_the_same_commit_keeps_the_benchmarks_it_does_not_repeat(tmp_path):
    run(tmp_path, bench("one", f"{FNS}:leaves_a_server_behind"), bench("two", f"{FNS}:breaks"))
    results, lines = run(tmp_path, bench("two", f"{FNS}:leaves_a_server_behind"))
    assert [(r.name, r.status) for r in results.benchmarks] == [("one", "ok"), ("two", "ok")]
    assert any("keeping one" in line for line in lines)
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_a_damaged_results_file_is_moved_aside_not_merged(tmp_path):
    first, _ = run(tmp_path, bench("one", f"{FNS}:breaks"))
    (tmp_path / f"{first.stem()}.json").write_text("{broken")
    results, lines = run(tmp_path, bench("two", f"{FNS}:breaks"))
    assert [r.name for r in results.benchmarks] == ["two"]
    assert len(list(tmp_path.glob("*.unreadable-*.json"))) == 1
