"""`cai start`, `status` and `stop` against a flaky gateway: every distinct request answered once with
a 502 or a connection reset *after* the emulator acted. The cluster still forms with each application
created exactly once, nothing is torn down by a blip, and stop removes everything (or, if one
application cannot be stopped, all the others, then says which one is left).

The applications run the real launcher (scripts/ray_node.py) as real processes; only the ``ray``
executable it starts is a stand-in in the project's venv (prints Ray's start line, serves the head's
GCS port, blocks until stopped), so a cluster forms in seconds; test_cai_cluster.py runs real Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cml_emulator import RUNTIME, CMLEmulator
from cml_emulator.server import free_port
from cml_emulator.store import Timing
from cml_emulator.workloads import wait_gone

from launchers.cai.client import CMLClient
from launchers.cai.cluster import CAIClusterManager
from launchers.cai.config import load_config
from launchers.cai.errors import CAIError
from launchers.cai.http import RetryPolicy

FAKE_RAY = '''#!{python}
import signal, socket, sys, time
args = sys.argv[1:]
ip = args[args.index("--node-ip-address") + 1]
if "--head" in args:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((ip, int(args[args.index("--port") + 1])))
    server.listen()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("Ray runtime started.", flush=True)
while True:
    time.sleep(1)
'''
FAULTS = {"502 after commit": {"status": 502}, "reset after commit": {"reset": True}}


@pytest.fixture
def cml(tmp_path: Path) -> Iterator[CMLEmulator]:
    with CMLEmulator(tmp_path / "cml", timing=Timing(app_start=0.1, run_schedule=0.1, stop_grace=3)) as emulator:
        yield emulator
        assert emulator.app.violations == [] and emulator.app.ignored == []


@pytest.fixture
def project(cml: CMLEmulator) -> str:
    project = cml.add_project("ray")
    ray = cml.project_dir(project) / ".venv" / "bin" / "ray"
    cml.write(project, ".venv/bin/ray", content=FAKE_RAY.format(python=sys.executable))
    ray.chmod(0o755)
    return project


def _config(cml: CMLEmulator, project: str, tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({
        "cai": {"host": cml.url, "project_id": project, "cluster_name": "flaky", "num_workers": 2,
                "poll_interval_s": 0.2, "start_timeout_s": 60, "resources": {"cpu": 1, "memory": 1}},
        "ray": {"port": free_port(), "dashboard_port": free_port(), "local_ports": "free"}}))
    return path


def _manager(cml: CMLEmulator, config: Path, lines: list[str]) -> CAIClusterManager:
    client = CMLClient(cml.url, cml.api_key, timeout=5, retry=RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05))
    return CAIClusterManager(load_config(config, env={"CML_API_KEY": cml.api_key}), client=client,
                             progress=lines.append)


def _app_posts(cml: CMLEmulator) -> list[str]:
    return [c for c in cml.app.calls if c.startswith("POST") and c.split()[1].endswith("/applications")]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_start_status_stop_survive_a_fault_on_every_call(cml: CMLEmulator, project: str, tmp_path: Path,
                                                         fault: str) -> None:
    lines: list[str] = []
    manager = _manager(cml, _config(cml, project, tmp_path), lines)

    # each create (three of one path) and every other distinct request once
    cml.inject(f"POST /api/v2/projects/{project}/applications", after=True, count=3, **FAULTS[fault])
    spoiler = cml.inject("", after=True, each_line=True, **FAULTS[fault])
    info = manager.start_cluster(info_file=tmp_path / "info.json")
    assert info.running and [n.node for n in info.nodes] == ["head", "worker-1", "worker-2"]
    assert not any("Start failed" in line or "stopped and deleted" in line for line in lines), lines
    apps = manager.client.list_applications(project)
    assert sorted(a.id for a in apps) == sorted(n.app_id for n in info.nodes)  # each made once
    assert {a.runtime_identifier for a in apps} == {RUNTIME}
    assert len(_app_posts(cml)) == 3 and all(" after " in c for c in _app_posts(cml))
    launchers = os.listdir(cml.project_dir(project) / ".ray-serve-cai" / "launchers")
    assert len(launchers) == 1 and "(1)" not in launchers[0]  # the upload, once
    assert len(spoiler.hits) >= 10 and any(":download" in line for line in spoiler.hits)

    spoiler = cml.inject("", after=True, each_line=True, **FAULTS[fault])
    status = manager.status()
    assert status.running and status.head_address == info.head_address and spoiler.hits

    pids = cml.workload_pids()
    spoiler = cml.inject("", after=True, each_line=True, **FAULTS[fault])
    assert sorted(manager.stop_cluster(timeout_s=30)) == sorted(a.id for a in apps)
    assert manager.client.list_applications(project) == []
    assert any(":stop" in line for line in spoiler.hits) and any(c.startswith("DELETE") for c in spoiler.hits)
    assert wait_gone(pids, timeout_s=15) == set()


def test_stop_removes_what_it_can_then_names_what_is_left(cml: CMLEmulator, project: str, tmp_path: Path) -> None:
    lines: list[str] = []
    manager = _manager(cml, _config(cml, project, tmp_path), lines)
    info = manager.start_cluster(info_file=None)
    stuck = next(n for n in info.nodes if n.node == "worker-1")
    cml.inject(f"/applications/{stuck.app_id}:stop", status=500, count=100)
    with pytest.raises(CAIError, match=rf"^stopped 2 of 3 application\(s\) of cluster 'flaky'; still there: "
                                       rf"flaky-worker-1 \({stuck.app_id}\): .*returned HTTP 500"):
        manager.stop_cluster(timeout_s=30)
    assert [a.id for a in manager.client.list_applications(project)] == [stuck.app_id]
    cml.app.faults.clear()
    assert manager.stop_cluster(timeout_s=30) == [stuck.app_id]


def test_cli_start_status_stop_with_a_reset_on_every_call(cml: CMLEmulator, project: str, tmp_path: Path) -> None:
    config = _config(cml, project, tmp_path)
    env = {**os.environ, "CML_API_KEY": cml.api_key}
    cli = [sys.executable, "-m", "ray_serve_cai", "cai"]
    for action in ("start", "status", "stop"):
        cml.inject("", after=True, each_line=True, reset=True)
        extra = ["--info-file", str(tmp_path / "info.json")] if action == "start" else []
        done = subprocess.run([*cli, action, "--config", str(config), *extra, *(["--check"] if action == "status"
                                                                                   else [])],
                              capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)
        assert done.returncode == 0, (action, done.stderr[-3000:])
        assert cml.api_key not in done.stdout + done.stderr
        if action == "status":
            assert json.loads(done.stdout)["running"] is True
    assert len(_app_posts(cml)) == 3
    with CMLClient(cml.url, cml.api_key) as client:
        assert client.list_applications(project) == []


def test_failed_start_removes_an_application_whose_create_answer_was_lost(cml: CMLEmulator, project: str,
                                                                          tmp_path: Path) -> None:
    """The head's create is made but answered 502, and looking it up fails too (every attempt of that
    listing errs): start fails, and its cleanup still finds the application by its nonce and removes it."""
    lines: list[str] = []
    manager = _manager(cml, _config(cml, project, tmp_path), lines)
    cml.inject(f"POST /api/v2/projects/{project}/applications", status=502, after=True)
    cml.inject(f"GET /api/v2/projects/{project}/applications", status=500, count=4, skip=1)  # 1: start's own look
    with pytest.raises(CAIError, match=r"failed \(HTTP 502\) and looking up whether it was applied failed too"):
        manager.start_cluster(info_file=None)
    assert "Start failed: removing the 1 application(s) it created" in lines
    assert manager.client.list_applications(project) == []
    assert wait_gone(cml.workload_pids(), timeout_s=15) == set()
