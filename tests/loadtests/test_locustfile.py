"""The shipped locustfile drives the real engine app headless, bounded in users and time."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.engine


@pytest.mark.parametrize("stream", ["1", "0"])
def test_locust_headless_run_has_no_failures(serve_stack, tmp_path, stream):
    env = {**os.environ, "LOCUST_MAX_TOKENS": "4", "LOCUST_STREAM": stream}
    prefix = tmp_path / "stats"
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
           "--host", serve_stack.base_url, "-u", "4", "-r", "4", "-t", "6s", "--csv", str(prefix),
           "--only-summary", "--stop-timeout", "5"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["Name"]: row for row in csv.DictReader(open(f"{prefix}_stats.csv"))}
    assert int(rows["chat"]["Request Count"]) > 0
    assert int(rows["chat"]["Failure Count"]) == 0
    assert ("TTFT" in rows) == (stream == "1")
