"""The results format of ``ray-serve-cai bench``: one JSON file per run, validated on write and on read.

A benchmark (a function in ``loadtests/``) returns a ``BenchOutput``: every round of every target as a
``Row``, the headline numbers with their targets, and optionally a timeline (failover). The runner wraps
each in a ``BenchmarkRecord`` (status, time, peak memory per process kind) and the whole run in
``BenchResults`` with the machine's facts.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, JsonValue

from serve_apps.validation import StrictModel

FORMAT_VERSION = 1


class BenchSettings(StrictModel):
    """What a benchmark function receives: how many alternating rounds, where to put its scratch files,
    and whether to run a tiny version (smoke test: short runs, small counts)."""

    rounds: int = Field(6, ge=1)
    workdir: Path
    tiny: bool = False
    haproxy: bool = False  # Serve's HAProxy ingress binds stats/metrics ports on every interface


class Row(StrictModel):
    """One target in one round: its numbers, and a sample of request latencies for the CDF plot."""

    round: int = Field(ge=0)
    target: str
    metrics: dict[str, float | int | None]
    latencies_ms: list[float] = []


class Headline(StrictModel):
    """A number the table shows: a median over rounds, or a ratio to the baseline."""

    metric: str
    value: float | None
    unit: str = ""
    target: str | None = None  # e.g. "<= 2", ">= 0.9"
    ok: bool | None = None


class TimelinePoint(StrictModel):
    """One second of an open-loop run: requests finished, how many failed."""

    t: float
    requests: int = Field(ge=0)
    errors: int = Field(ge=0)


class BenchOutput(StrictModel):
    rows: list[Row]
    headlines: list[Headline] = []
    timeline: list[TimelinePoint] = []
    events: dict[str, float] = {}  # moments on the timeline, e.g. {"kill": 10.0}
    details: dict[str, JsonValue] = {}


class MemoryPeak(StrictModel):
    """Peak RSS of one kind of process during a benchmark: all of that kind summed per sample (each with
    its unnamed descendants, e.g. vLLM's engine core under a server), and the largest single one."""

    process: str
    peak_rss_mib: float = Field(ge=0)
    processes: int = Field(ge=0)
    largest_mib: float = Field(ge=0)


Status = Literal["ok", "failed", "missing", "timeout", "interrupted"]


class BenchmarkRecord(StrictModel):
    name: str
    title: str
    baseline: str
    status: Status
    error: str | None = None
    started: dt.datetime
    seconds: float = Field(ge=0)
    settings: BenchSettings
    output: BenchOutput | None = None
    memory: list[MemoryPeak] = []
    # command lines of the processes the runner had to kill after the benchmark returned
    leftovers_killed: list[str] = []


class Machine(StrictModel):
    cores: int
    memory_gib: float
    cpu_model: str
    # the instruction-set flags vLLM's CPU kernels choose by (results before 7 Dec 2026 have none)
    cpu_flags: list[str] = []
    gpu: str | None
    platform: str
    load_avg: list[float]
    versions: dict[str, str | None]


class BenchResults(StrictModel):
    format: Literal[1] = FORMAT_VERSION
    started: dt.datetime
    finished: dt.datetime | None = None
    commit: str
    dirty: bool
    machine: Machine
    command: list[str]
    benchmarks: list[BenchmarkRecord] = []

    def stem(self) -> str:
        """``<date>-<commit>``: the name of the JSON, markdown and plot files of this run."""
        return run_stem(self.started, self.commit)


def run_stem(started: dt.datetime, commit: str) -> str:
    """``<date>-<commit>``, how every results file is named: a harness run's files are ``<stem>.json``
    (``.md``, ``-<plot>.png``), a standalone benchmark script's ``<stem>-<name>.json``."""
    return f"{started.strftime('%Y-%m-%d')}-{commit}"


def write_results(results: BenchResults, out_dir: Path) -> Path:
    """Validate and write ``<out>/<date>-<commit>.json``; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{results.stem()}.json"
    checked = BenchResults.model_validate(results.model_dump())  # the file is valid or not written
    path.write_text(checked.model_dump_json(indent=1) + "\n")
    return path


def read_results(path: Path) -> BenchResults:
    return BenchResults.model_validate(json.loads(Path(path).read_text()))


def headline(metric: str, values: list[float | None] | float | None, unit: str = "", *,
             at_most: float | None = None, at_least: float | None = None) -> Headline:
    """A headline from one value or the per-round values (their median), checked against a target."""
    import statistics

    if isinstance(values, list):
        present = [v for v in values if v is not None]
        value = statistics.median(present) if present else None
    else:
        value = values
    target, ok = None, None
    if at_most is not None:
        target, ok = f"<= {at_most:g}", None if value is None else value <= at_most
    elif at_least is not None:
        target, ok = f">= {at_least:g}", None if value is None else value >= at_least
    return Headline(metric=metric, value=None if value is None else round(float(value), 4), unit=unit,
                    target=target, ok=ok)
