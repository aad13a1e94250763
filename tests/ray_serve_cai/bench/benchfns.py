"""Benchmark functions for the runner's tests: real child processes, no engines."""

from __future__ import annotations

import subprocess
import time

from ray_serve_cai.bench.results import BenchOutput, BenchSettings, Row, headline


def leaves_a_server_behind(settings: BenchSettings) -> BenchOutput:
    """Starts a long-lived process in a process group of its own (as the benchmarks start servers) and
    'forgets' to stop it; holds 40 MiB itself for a moment so the memory sampler sees it."""
    subprocess.Popen(["sleep", "301"], process_group=0)
    ballast = bytearray(40 * 2**20)
    time.sleep(2.5)
    del ballast
    return BenchOutput(rows=[Row(round=r, target="t", metrics={"x": r}) for r in range(settings.rounds)],
                       headlines=[headline("x", [float(r) for r in range(settings.rounds)])])


def hangs(settings: BenchSettings) -> BenchOutput:
    subprocess.Popen(["sleep", "302"], process_group=0)
    time.sleep(300)
    raise AssertionError("the runner should have stopped this")


def breaks(settings: BenchSettings) -> BenchOutput:
    raise RuntimeError("the backend never came up")
