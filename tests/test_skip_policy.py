"""scripts/test.sh fails when a test skips for a reason other than needing a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SUITE = '''
import pytest

def test_runs():
    assert True

@pytest.mark.skipif(True, reason="needs a GPU: CUDA only")
def test_gpu():
    pass

def test_tool():
    pytest.skip("{reason}")
'''


def run(tmp_path: Path, reason: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_suite.py").write_text(SUITE.format(reason=reason))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.skip_policy",
                           "--only-gpu-skips", "-q", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_gpu_skips_pass(tmp_path: Path) -> None:
    done = run(tmp_path, "needs a GPU: no CUDA here")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 2 skipped" in done.stdout


def test_any_other_skip_fails_the_run(tmp_path: Path) -> None:
    done = run(tmp_path, "node not installed")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "test_suite.py::test_tool: node not installed" in done.stdout
    assert "test_gpu" not in done.stdout.split("fails the run")[1]


def test_test_sh_fails_on_a_skip(tmp_path: Path) -> None:
    """The real script (it re-runs the idempotent setup first, ~5 s) on a suite with a non-GPU skip."""
    (tmp_path / "test_suite.py").write_text(SUITE.format(reason="prometheus not installed"))
    done = subprocess.run([str(REPO / "scripts" / "test.sh"), str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "test_tool: prometheus not installed" in done.stdout
