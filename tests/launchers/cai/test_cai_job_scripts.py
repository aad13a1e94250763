"""The CML job scripts outside the cluster path (launch_ray_cluster runs in test_cai_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
JOBS = REPO / "launchers" / "cai" / "jobs"


def run_job(script: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(JOBS / script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(home), **env})


def test_setup_environment_is_idempotent(tmp_path: Path) -> None:
    """With a venv whose stamp matches pyproject.toml, a rerun installs nothing and only verifies."""
    sys.path.insert(0, str(JOBS))
    try:
        import setup_environment
    finally:
        sys.path.remove(str(JOBS))
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"  # stands in for the project venv's python
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (venv / ".ray-serve-cai-stamp").write_text(setup_environment.stamp_for(tmp_path, "") + "\n")
    done = run_job("setup_environment.py", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout and "pip install" not in done.stdout
    assert "ray " in done.stdout  # the verification imported ray and the package
    assert setup_environment.stamp_for(tmp_path, "gpu") != setup_environment.stamp_for(tmp_path, "")


def test_git_sync_fast_forwards_the_checkout(tmp_path: Path) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    origin, home = tmp_path / "origin", tmp_path / "home"
    origin.mkdir()
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=origin, check=True)
    (origin / "a.txt").write_text("1")
    subprocess.run([*git, "add", "."], cwd=origin, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], cwd=origin, check=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(home)], check=True)
    (origin / "a.txt").write_text("2")
    subprocess.run([*git, "commit", "-q", "-am", "two"], cwd=origin, check=True)
    done = run_job("git_sync.py", home)
    assert done.returncode == 0, done.stderr
    assert (home / "a.txt").read_text() == "2"


def test_launch_job_reports_config_errors_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CML_", "CDSW_"))}
    done = subprocess.run([sys.executable, str(JOBS / "launch_ray_cluster.py")], capture_output=True, text=True,
                          timeout=120, env={**env, "HOME": str(tmp_path)})
    assert done.returncode == 1
    assert done.stderr.strip().startswith("launch_ray_cluster: error: cannot read config")
