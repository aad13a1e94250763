"""``serve deploy`` of a serve config onto a started cluster, through its dashboard address."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from launchers.cai.errors import CAIError


def serve_executable() -> str:
    local = Path(sys.executable).parent / "serve"
    found = str(local) if local.is_file() else shutil.which("serve")
    if not found:
        raise CAIError("the `serve` command (ray[serve]) is not installed")
    return found


def serve_deploy(config_path: str, dashboard_url: str | None, *, progress: Callable[[str], None],
                 timeout_s: float = 300) -> None:
    """Deploy ``config_path`` (``serve build`` output) to the cluster; raise with Serve's last lines."""
    if not dashboard_url:
        raise CAIError("serve deploy needs the Ray dashboard: set ray.include_dashboard: true")
    if not Path(config_path).is_file():
        raise CAIError(f"serve config not found: {config_path}")
    command = [serve_executable(), "deploy", config_path, "--address", dashboard_url]
    progress(f"   serve deploy {config_path} -> {dashboard_url}")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        raise CAIError(f"serve deploy did not finish in {timeout_s:.0f}s") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise CAIError(f"serve deploy of {config_path} failed: {tail}")
    progress("   serve deploy accepted; `serve status --address` shows the rollout")
