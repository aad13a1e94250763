"""A real Ray cluster on emulated CML applications: `cai start` (head + 2 workers on loopback,
each application its own process tree and 127.0.0.x address), a Serve app answering, idempotent
restart, the in-CML launch job, status, and `cai stop` leaving no process behind.

One cluster for the whole module (forming it takes ~30-60 s on 2 cores); tests run in order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from cml_emulator import RUNTIME, CMLEmulator
from cml_emulator.server import free_port
from cml_emulator.store import Timing
from cml_emulator.workloads import marked_processes, wait_gone

from launchers.cai.client import CMLClient

REPO = Path(__file__).resolve().parents[3]
CLI = [sys.executable, "-m", "ray_serve_cai"]
ALIAS = [sys.executable, "-m", "ray_serve_cai.launch_cluster"]
HELLO_APP = b'''
import ray
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Hello:
    def __call__(self, request):
        return {"message": "hello from a CML application", "node_ip": ray.util.get_node_ip_address()}


app = Hello.bind()
'''


class Cluster:
    def __init__(self, cml: CMLEmulator, project: str, workdir: Path) -> None:
        self.cml, self.project, self.workdir = cml, project, workdir
        self.serve_port, self.router_port, self.dead_port = free_port(), free_port(), free_port()
        self.temp = f"/tmp/rsc-cai-{uuid.uuid4().hex[:8]}"
        self.config = self.write_config("cluster.yaml", cluster_name="rsc-test", num_workers=2)
        self.serve_config = workdir / "serve.yaml"
        self.serve_config.write_text(yaml.safe_dump({
            "proxy_location": "HeadOnly",  # three nodes share one host: one proxy, one port
            "http_options": {"host": "127.0.0.1", "port": self.serve_port},
            "applications": [
                {"name": "hello", "route_prefix": "/", "import_path": "hello_app:app"},
                # the project's router, its own listener the front door (its backend is down: the
                # listener and its /metrics answer regardless)
                {"name": "router", "route_prefix": "/router", "import_path": "serve_apps.router.app:build_router_app",
                 "args": {"router": {"listen": {"host": "127.0.0.1", "port": self.router_port}},
                          "backends": [{"name": "down", "kind": "openai", "url": f"http://127.0.0.1:{self.dead_port}",
                                        "models": ["m"]}]}},
            ],
        }))
        self.env = {**os.environ, "CML_API_KEY": cml.api_key}

    def write_config(self, name: str, *, cluster_name: str, num_workers: int, timeout: float = 240,
                     in_cml: bool = False) -> Path:
        cai = {"cluster_name": cluster_name, "num_workers": num_workers, "poll_interval_s": 0.5,
               "start_timeout_s": timeout, "resources": {"cpu": 1, "memory": 2, "num_gpus": 1},
               "head_resources": {"cpu": 1, "memory": 2}}
        if not in_cml:  # inside CML the job finds host, key and project in CDSW_* variables
            cai |= {"host": self.cml.url, "project_id": self.project}
        config = {"cai": cai, "ray": {
            "port": free_port(), "dashboard_port": free_port(), "local_ports": "free", "num_cpus": 1,
            "object_store_memory_mb": 80, "temp_dir": f"{self.temp}/{cluster_name}"}}
        path = self.workdir / name
        path.write_text(yaml.safe_dump(config))
        return path

    def run(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*args], capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.workdir)

    def apps(self) -> list:
        with CMLClient(self.cml.url, self.cml.api_key) as client:
            return client.list_applications(self.project)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cai-cluster")
    with CMLEmulator(root / "cml", timing=Timing(app_start=0.2, run_schedule=0.2, stop_grace=8)) as cml:
        project = cml.add_project("ray-serve-cai")
        with CMLClient(cml.url, cml.api_key) as client:  # the user's code, pushed to the project
            client.upload_file(project, "hello_app.py", HELLO_APP)
            job_script = REPO / "launchers/cai/jobs/launch_ray_cluster.py"
            client.upload_file(project, "launchers/cai/jobs/launch_ray_cluster.py", job_script.read_bytes())
        cluster = Cluster(cml, project, root)
        yield cluster
        assert cml.app.violations == []
    shutil.rmtree(cluster.temp, ignore_errors=True)  # Ray's per-node temp dirs


@pytest.fixture(scope="module")
def started(cluster: Cluster) -> subprocess.CompletedProcess[str]:
    return cluster.run(*CLI, "cai", "start", "--config", str(cluster.config),
                       "--serve-config", str(cluster.serve_config), "--info-file", "info.json")


def test_start_forms_a_three_node_ray_cluster(cluster: Cluster, started: subprocess.CompletedProcess[str]) -> None:
    assert started.returncode == 0, started.stderr[-3000:]
    info = json.loads((cluster.workdir / "info.json").read_text())
    assert info == json.loads(started.stdout)
    assert info["running"] and [n["node"] for n in info["nodes"]] == ["head", "worker-1", "worker-2"]
    assert info["head_address"].startswith("127.0.0.") and info["head_resources"]["gpus"] == 0
    assert cluster.cml.api_key not in started.stdout + started.stderr
    assert "[" in started.stderr and "s] head:" in started.stderr  # visible progress while waiting

    apps = {a.name: a for a in cluster.apps()}
    assert set(apps) == {"rsc-test-head", "rsc-test-worker-1", "rsc-test-worker-2"}
    assert apps["rsc-test-head"].nvidia_gpu == 0  # the head never gets a GPU, even when workers do
    assert apps["rsc-test-worker-1"].nvidia_gpu == 1

    nodes = httpx.get(f"{info['dashboard_url']}/api/v0/nodes", timeout=30).json()["data"]["result"]["result"]
    alive = [n for n in nodes if n["state"] == "ALIVE"]
    assert len({n["node_ip"] for n in alive}) == 3  # three "pods", three addresses
    cpus = {n["is_head_node"]: n["resources_total"].get("CPU", 0) for n in alive}
    assert cpus == {True: 0, False: 1}  # the head coordinates; work goes to the workers


def test_serve_app_deployed_on_it_answers(cluster: Cluster, started: subprocess.CompletedProcess[str]) -> None:
    assert started.returncode == 0
    deadline, last = time.monotonic() + 180, None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"http://127.0.0.1:{cluster.serve_port}/", timeout=10)
            if last.status_code == 200:
                break
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1)
    assert isinstance(last, httpx.Response) and last.status_code == 200, last
    assert last.json()["message"] == "hello from a CML application"
    assert last.json()["node_ip"].startswith("127.0.0.")


def test_output_says_where_the_front_door_and_its_metrics_are(cluster: Cluster,
                                                                started: subprocess.CompletedProcess[str]) -> None:
    info = json.loads(started.stdout)
    assert json.loads((cluster.workdir / "info.json").read_text())["serve"] == info["serve"]
    door = f"http://127.0.0.1:{cluster.router_port}"
    assert info["serve"] == {"config": str(cluster.serve_config), "serve_proxy_url": f"http://127.0.0.1:{cluster.serve_port}",
                             "front_doors": [{"app": "router", "url": f"{door}/v1", "metrics_url": f"{door}/metrics",
                                              "ready_url": f"{door}/ready", "ready": None}]}
    assert f"front door: {door}/v1" in started.stderr and f"metrics:   {door}/metrics" in started.stderr
    assert f"dashboard: {info['dashboard_url']}" in started.stderr
    deadline, last = time.monotonic() + 180, None
    while time.monotonic() < deadline:  # `serve deploy` returns before the rollout
        try:
            last = httpx.get(info["serve"]["front_doors"][0]["metrics_url"], timeout=10)
            if last.status_code == 200 and "backend_health_status" in last.text:
                break
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1)
    assert isinstance(last, httpx.Response) and last.status_code == 200, last
    assert last.headers["content-type"].startswith("text/plain")
    assert 'backend_health_status{' in last.text and 'backend="down"' in last.text


def test_second_start_finds_the_running_cluster(cluster: Cluster, started: subprocess.CompletedProcess[str]) -> None:
    before = sorted(a.id for a in cluster.apps())
    again = cluster.run(*CLI, "cai", "start", "--config", str(cluster.config), "--info-file", "info2.json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(a.id for a in cluster.apps()) == before
    assert "found running" in again.stderr and "created" not in again.stderr
    assert json.loads(again.stdout)["reused"] is True


def test_launch_job_inside_cml_reuses_the_cluster(cluster: Cluster, started: subprocess.CompletedProcess[str]) -> None:
    """The launch_ray_cluster job, run by CML (emulated): API address, key, project from CDSW_*."""
    config = cluster.write_config("in-cml.yaml", cluster_name="rsc-test", num_workers=2, in_cml=True)
    expected = yaml.safe_load(cluster.config.read_text())["ray"]
    in_cml = yaml.safe_load(config.read_text())
    in_cml["ray"] = expected  # same cluster, same ports
    config.write_text(yaml.safe_dump(in_cml))
    with CMLClient(cluster.cml.url, cluster.cml.api_key) as client:
        job = client.create_job(cluster.project, name="Launch Ray Cluster", cpu=1, memory=1, timeout=300,
                                script="launchers/cai/jobs/launch_ray_cluster.py", runtime_identifier=RUNTIME,
                                environment={"RAY_CLUSTER_CONFIG": str(config)})
        run = client.create_job_run(cluster.project, job.id)
        deadline = time.monotonic() + 180
        while not run.finished and time.monotonic() < deadline:
            time.sleep(0.5)
            run = client.get_job_run(cluster.project, job.id, run.id)
    log = (cluster.cml.store.root / "logs" / f"{run.id}.log").read_text()
    assert run.status == "ENGINE_SUCCEEDED", log[-3000:]
    info = json.loads((cluster.cml.project_dir(cluster.project) / "ray_cluster_info.json").read_text())
    assert info["reused"] and info["head_address"] == json.loads(started.stdout)["head_address"]
    assert cluster.cml.api_key not in log


def test_status_through_cli_and_seed_alias(cluster: Cluster, started: subprocess.CompletedProcess[str]) -> None:
    status = cluster.run(*CLI, "cai", "status", "--config", str(cluster.config), "--check")
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    assert body["running"] and all(n["ready"] and n["status"] == "APPLICATION_RUNNING" for n in body["nodes"])
    assert body["serve"] is None  # no serve config named
    with_serve = cluster.run(*CLI, "cai", "status", "--config", str(cluster.config), "--serve-config",
                             str(cluster.serve_config))
    assert with_serve.returncode == 0, with_serve.stderr
    served = json.loads(with_serve.stdout)["serve"]
    # status asks the router's readiness: its only backend is down, so no model can generate
    assert [door["ready"] for door in served["front_doors"]] == [False]
    started_serve = json.loads(started.stdout)["serve"]
    assert served == {**started_serve, "front_doors": [{**d, "ready": False} for d in started_serve["front_doors"]]}
    alias = cluster.run(*ALIAS, "--config", str(cluster.config), "status-cai")
    assert alias.returncode == 0 and json.loads(alias.stdout)["head_address"] == body["head_address"]


def test_stop_deletes_every_application_and_leaves_no_process(cluster: Cluster) -> None:
    pids = cluster.cml.workload_pids()
    assert len(pids) >= 9  # launchers, `ray start`, GCS, raylets, agents, Serve actors...
    stopped = cluster.run(*ALIAS, "--config", str(cluster.config), "stop-cai")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert cluster.apps() == []
    assert wait_gone(pids, timeout_s=15) == set()
    for app_workload in cluster.cml.store.workloads():
        assert marked_processes(app_workload.id) == []
    status = cluster.run(*CLI, "cai", "status", "--config", str(cluster.config), "--check")
    assert status.returncode == 3 and "is not running" in status.stderr


def test_failed_start_removes_what_it_created(cluster: Cluster) -> None:
    config = cluster.write_config("doomed.yaml", cluster_name="rsc-doomed", num_workers=1, timeout=1)
    failed = cluster.run(*CLI, "cai", "start", "--config", str(config))
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith("ray-serve-cai: error: Ray cluster not ready after")
    assert "Traceback" not in failed.stderr
    assert cluster.apps() == []
    assert wait_gone(cluster.cml.workload_pids(), timeout_s=15) == set()
