"""The results format, the markdown table and the plots, from a results file written by the writer."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from ray_serve_cai.bench.machine import machine_facts
from ray_serve_cai.bench.plots import render_all
from ray_serve_cai.bench.report import markdown
from ray_serve_cai.bench.results import (
    BenchmarkRecord,
    BenchOutput,
    BenchResults,
    BenchSettings,
    MemoryPeak,
    Row,
    TimelinePoint,
    headline,
    read_results,
    write_results,
)

START = dt.datetime(2026, 11, 29, 18, 0, tzinfo=dt.UTC)


def record(name: str, output: BenchOutput | None, status: str = "ok", error: str | None = None) -> BenchmarkRecord:
    return BenchmarkRecord(name=name, title=f"{name} title", baseline="base", status=status, error=error, started=START,
                           seconds=12.5, settings=BenchSettings(rounds=2, workdir=Path("/tmp/x"), tiny=True),
                           output=output, memory=[MemoryPeak(process="router replica", peak_rss_mib=342.8, processes=2,
                                                      largest_mib=171.4)])


def sample_results() -> BenchResults:
    scaling_rows = [Row(round=r, target=t, latencies_ms=[10.0 * c, 20.0 * c, 40.0 * c],
                        metrics={"concurrency": c, "rps": c * f, "ttft_p50_ms": 10.0 * c, "ttft_p95_ms": 30.0 * c})
                    for r in range(2) for t, f in (("stock vLLM", 1.0), ("front door", 0.9), ("LiteLLM", 0.2))
                    for c in (1, 4, 16)]
    failover = BenchOutput(rows=[Row(round=0, target="router, a killed", metrics={"client_errors": 0})],
                           headlines=[headline("client errors", [0, 1, 0], at_most=0)],
                           timeline=[TimelinePoint(t=float(t), requests=10, errors=1 if t == 5 else 0) for t in range(10)],
                           events={"kill": 5.0})
    scaling = BenchOutput(rows=scaling_rows, headlines=[headline("front door / stock", 0.93, at_least=0.9),
                                                        headline("router CPU", [1.0, None, 3.0], "ms")])
    return BenchResults(started=START, commit="abc1234", dirty=False, machine=machine_facts(), command=["bench"],
                        benchmarks=[record("scaling", scaling), record("p3", failover),
                                    record("p1", None, "missing", "module loadtests.bench_frontdoor is missing")])


def test_headline_takes_the_median_and_checks_the_target():
    assert headline("x", [3.0, 1.0, None, 2.0], at_most=2).model_dump() == {
        "metric": "x", "value": 2.0, "unit": "", "target": "<= 2", "ok": True}
    assert headline("y", 0.5, at_least=0.9).ok is False
    assert headline("z", [None]).value is None and headline("z", [None]).ok is None


def test_written_file_reads_back_and_is_named_by_date_and_commit(tmp_path):
    results = sample_results()
    path = write_results(results, tmp_path)
    assert path.name == "2026-11-29-abc1234.json"
    assert read_results(path) == results


def test_machine_facts_name_this_machine():
    facts = machine_facts()
    assert facts.cores >= 1 and facts.memory_gib > 0 and facts.cpu_model
    assert facts.versions["python"] == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    assert facts.versions["ray"] and facts.versions["vllm"]


def test_reader_rejects_a_file_that_is_not_a_results_file(tmp_path):
    data = json.loads(write_results(sample_results(), tmp_path).read_text())
    data["benchmarks"][0]["status"] = "great"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValidationError, match="status"):
        read_results(tmp_path / "bad.json")


def test_markdown_has_every_headline_target_and_failure():
    text = markdown(sample_results())
    assert "| scaling | 2 (tiny) | front door / stock | 0.93 | >= 0.9 | yes |" in text
    assert "| p3 | 2 (tiny) | client errors | 0 | <= 0 | yes |" in text
    assert "| p1 | 2 (tiny) | missing | module loadtests.bench_frontdoor is missing | | |" in text
    assert "| scaling | router replica | 343 | 2 | 171 | <= 300 | yes |" in text
    assert "commit abc1234" in text


def test_plots_render_from_a_results_file(tmp_path):
    results = read_results(write_results(sample_results(), tmp_path))
    made = render_all(results, tmp_path)
    assert sorted(p.name for p in made) == ["2026-11-29-abc1234-failover.png", "2026-11-29-abc1234-latency-cdf.png",
                                            "2026-11-29-abc1234-scaling.png"]
    for png in made:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plots_skip_what_the_results_lack(tmp_path):
    results = sample_results()
    results.benchmarks = results.benchmarks[2:]  # only the missing one
    assert render_all(results, tmp_path) == []


def test_report_command_rerenders_a_results_file(tmp_path):
    path = write_results(sample_results(), tmp_path)
    done = subprocess.run([sys.executable, "-m", "ray_serve_cai", "bench", "--report", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| scaling | 2 (tiny) | front door / stock | 0.93 |" in done.stdout
    assert (tmp_path / "2026-11-29-abc1234.md").exists() and (tmp_path / "2026-11-29-abc1234-scaling.png").exists()


@pytest.mark.parametrize(("content", "message"), [("{not json", "is not JSON"), ('{"format": 1}', "not a bench results file")])
def test_report_command_names_a_bad_file_in_one_line(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    done = subprocess.run([sys.executable, "-m", "ray_serve_cai", "bench", "--report", str(bad)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
