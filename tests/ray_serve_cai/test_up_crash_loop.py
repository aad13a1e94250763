"""`up` stops when an engine replica keeps dying of the same fatal error, instead of waiting forever.

The engine (tests/serve_apps/crash_engine.py) dies of a real SIGILL on its first generation, as vLLM's
worker did on Intel CPUs with AMX: the replica starts, `up`'s readiness generation kills it, Serve
restarts it, and so on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launchers.local import free_port
from launchers.procs import descendants

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.engine


def test_up_stops_on_an_engine_crash_loop_with_the_fatal_error(tmp_path):
    config = yaml.safe_load((ROOT / "serve_configs" / "local.yaml").read_text())
    config["http_options"]["port"] = free_port()
    args = config["applications"][0]["args"]
    args["router"]["listen"]["port"] = free_port()
    args["engines"] = [{"name": "crashy", "engine": "tests.serve_apps.crash_engine:CrashEngine", "num_cpus": 0}]
    args["backends"] = [{"name": "local", "kind": "serve", "engine": "crashy"}]
    path = tmp_path / "crash.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ray_serve_cai", "up", "--config", str(path), "--timeout", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    tree: list[int] = []
    try:
        # snapshot the tree while it runs: after exit, nothing it started may be left
        while proc.poll() is None and time.monotonic() - started < 400:
            tree = sorted(set(tree) | set(descendants(proc.pid)))
            time.sleep(1)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - started
    assert proc.returncode not in (0, None), stderr[-3000:]
    assert "ready:" not in stdout
    assert 'died 3 times with "Fatal Python error: Illegal instruction"' in stderr, stderr[-3000:]
    assert "crash_engine.py" in stderr, stderr[-3000:]  # the dying frame, from the replica's log
    assert "hint:" in stderr and "log: " in stderr
    assert elapsed < 400, f"took {elapsed:.0f} s; the timeout was 600"
    time.sleep(1)
    alive = [pid for pid in tree if os.path.exists(f"/proc/{pid}") and
             "zombie" not in open(f"/proc/{pid}/status").read().lower()]
    assert alive == [], f"processes left behind: {alive}"
