"""The CML jobs pipeline against the emulator, with a real local git repository as the source:
first run creates and runs everything, a second run skips, FORCE_REBUILD reruns, a failing job stops
the chain with a clear message, injected 429/500 are retried."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cml_emulator import RUNTIME, CMLEmulator

from launchers.cai.client import CMLClient
from launchers.cai.errors import CAIError
from launchers.cai.pipeline import create_jobs, load_jobs_config, setup_project, trigger_jobs
from launchers.cai.pipeline.config import DEFAULT_JOBS_CONFIG
from launchers.cai.pipeline.jobs import Waiting

REPO = Path(__file__).resolve().parents[3]
FAST = Waiting(poll_s=0.1, status_every_s=0.5, dependent_grace_s=5)
STEP = '''import os, sys
from pathlib import Path
home = Path(os.environ["HOME"])
with open(home / "runs.log", "a") as log:
    log.write("{name}\\n")
sys.exit(3 if (home / "FAIL_{name}").exists() else 0)
'''


@pytest.fixture
def source_repo(tmp_path: Path) -> Path:
    """A git repository standing in for GitHub: three step scripts and their jobs config."""
    repo = tmp_path / "source"
    (repo / "steps").mkdir(parents=True)
    jobs = {}
    parent = None
    for key, name in (("git_sync", "Sync"), ("setup_environment", "Setup"), ("launch_ray_cluster", "Launch")):
        (repo / "steps" / f"{key}.py").write_text(STEP.format(name=key))
        jobs[key] = {"name": name, "script": f"steps/{key}.py", "cpu": 1, "memory": 1, "timeout": 60,
                     "parent_job_key": parent}
        parent = key
    (repo / "jobs.yaml").write_text(yaml.safe_dump({"jobs": jobs}))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for command in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "steps"]):
        subprocess.run([*git, *command], cwd=repo, check=True)
    return repo


def runs_log(cml: CMLEmulator, project_id: str) -> list[str]:
    path = cml.project_dir(project_id) / "runs.log"
    return path.read_text().split() if path.exists() else []


def posts_of_runs(cml: CMLEmulator) -> int:
    return sum(1 for c in cml.app.calls if c.startswith("POST") and "/runs ->" in c)


def test_real_jobs_config_is_the_seed_chain() -> None:
    config = load_jobs_config(DEFAULT_JOBS_CONFIG)
    assert config.ordered() == ["git_sync", "setup_environment", "launch_ray_cluster"]
    for spec in config.jobs.values():
        script = REPO / spec.script
        assert script.is_file(), spec.script
        compile(script.read_text(), str(script), "exec")


def test_jobs_config_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "jobs.yaml"
    bad.write_text(yaml.safe_dump({"jobs": {"a": {"name": "A", "script": "a.py", "parent_job_key": "zz"}}}))
    with pytest.raises(CAIError, match="jobs.a.parent_job_key: unknown job 'zz'"):
        load_jobs_config(bad)
    bad.write_text(yaml.safe_dump({"jobs": {"a": {"name": "A", "script": "a.py", "cpus": 4}}}))
    with pytest.raises(CAIError, match=r"jobs\.a\.cpus"):
        load_jobs_config(bad)


def test_setup_project_creates_from_git_then_finds_it(emulator: CMLEmulator, client: CMLClient, source_repo: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(11):  # more than a page of look-alikes
        emulator.add_project(f"ray-cluster-{i}")
    emulator.store.timing.clone = 1.2
    github_output = tmp_path / "gh_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(github_output))
    lines: list[str] = []
    project = setup_project(client, "ray-cluster", str(source_repo), progress=lines.append, poll_s=0.1,
                            status_every_s=0.5, output_file=tmp_path / "project_id.txt")
    assert (emulator.project_dir(project.id) / "steps" / "git_sync.py").is_file()  # really cloned
    assert (tmp_path / "project_id.txt").read_text().strip() == project.id
    assert github_output.read_text() == f"project_id={project.id}\n"
    status_lines = [line for line in lines if "Status: creating" in line]
    assert len(status_lines) >= 2  # a status line while waiting, at least every status_every_s
    again: list[str] = []
    assert setup_project(client, "ray-cluster", str(source_repo), progress=again.append, poll_s=0.1).id == project.id
    assert any("Found existing project" in line for line in again)
    assert sum(1 for c in emulator.app.calls if c.startswith("POST /api/v2/projects ->")) == 1


def test_failed_clone_is_reported(emulator: CMLEmulator, client: CMLClient, tmp_path: Path) -> None:
    with pytest.raises(CAIError, match="creation failed: status failure"):
        setup_project(client, "broken", str(tmp_path / "no-such-repo"), progress=lambda _: None, poll_s=0.1)


def test_create_jobs_never_duplicates_and_updates(emulator: CMLEmulator, client: CMLClient, source_repo: Path) -> None:
    project = setup_project(client, "jobs", str(source_repo), progress=lambda _: None, poll_s=0.1).id
    emulator.write(project, "x.py")
    for i in range(11):  # unrelated jobs: the lookup must page
        client.create_job(project, name=f"other-{i}", script="x.py", cpu=1, memory=1, runtime_identifier=RUNTIME)
    config = load_jobs_config(source_repo / "jobs.yaml")
    ids = create_jobs(client, project, config, progress=lambda _: None)
    jobs = {j.id: j for j in client.list_jobs(project)}
    assert jobs[ids["setup_environment"]].parent_id == ids["git_sync"]
    assert jobs[ids["launch_ray_cluster"]].parent_id == ids["setup_environment"]

    lines: list[str] = []
    assert create_jobs(client, project, config, progress=lines.append) == ids
    assert all("up to date" in line for line in lines)
    config.jobs["setup_environment"].cpu = 2
    config.jobs["setup_environment"].environment = {"RAY_SERVE_CAI_EXTRAS": "gpu"}
    config.jobs["setup_environment"].timeout = 900
    lines.clear()
    assert create_jobs(client, project, config, progress=lines.append) == ids
    assert any("updated job 'setup_environment'" in line and "cpu" in line for line in lines)
    updated = client.list_jobs(project, name="Setup")[0]
    assert (updated.cpu, updated.environment, updated.timeout) == (2, {"RAY_SERVE_CAI_EXTRAS": "gpu"}, 900)
    assert len(client.list_jobs(project)) == 14


def test_trigger_runs_in_order_then_skips_then_force(emulator: CMLEmulator, client: CMLClient,
                                                      source_repo: Path) -> None:
    project = setup_project(client, "chain", str(source_repo), progress=lambda _: None, poll_s=0.1).id
    config = load_jobs_config(source_repo / "jobs.yaml")
    create_jobs(client, project, config, progress=lambda _: None)

    lines: list[str] = []
    result = trigger_jobs(client, project, config, progress=lines.append, waiting=FAST)
    assert result == dict.fromkeys(config.jobs, "ENGINE_SUCCEEDED")
    assert runs_log(emulator, project) == ["git_sync", "setup_environment", "launch_ray_cluster"]
    assert posts_of_runs(emulator) == 1  # CML started the dependents itself; none ran twice
    assert any("started by CML after its parent" in line for line in lines)

    assert trigger_jobs(client, project, config, progress=lines.append, waiting=FAST) == dict.fromkeys(
        config.jobs, "SKIPPED")
    assert posts_of_runs(emulator) == 1 and len(runs_log(emulator, project)) == 3

    trigger_jobs(client, project, config, force=True, progress=lambda _: None, waiting=FAST)
    assert runs_log(emulator, project)[3:] == ["git_sync", "setup_environment", "launch_ray_cluster"]


def test_failing_job_stops_the_chain_then_resumes_there(emulator: CMLEmulator, client: CMLClient,
                                                        source_repo: Path) -> None:
    project = setup_project(client, "failing", str(source_repo), progress=lambda _: None, poll_s=0.1).id
    config = load_jobs_config(source_repo / "jobs.yaml")
    create_jobs(client, project, config, progress=lambda _: None)
    (emulator.project_dir(project) / "FAIL_setup_environment").touch()
    with pytest.raises(CAIError, match=r"job 'Setup' failed: run \S+ ended ENGINE_FAILED; later jobs were not run"):
        trigger_jobs(client, project, config, progress=lambda _: None, waiting=FAST)
    assert runs_log(emulator, project) == ["git_sync", "setup_environment"]

    (emulator.project_dir(project) / "FAIL_setup_environment").unlink()
    result = trigger_jobs(client, project, config, progress=lambda _: None, waiting=FAST)
    assert result["git_sync"] == "SKIPPED" and result["launch_ray_cluster"] == "ENGINE_SUCCEEDED"
    assert runs_log(emulator, project)[2:] == ["setup_environment", "launch_ray_cluster"]


def test_pipeline_rides_through_429_and_500(emulator: CMLEmulator, client: CMLClient, source_repo: Path) -> None:
    emulator.inject("GET /api/v2/projects", status=429, count=2)
    emulator.inject("/jobs", status=500, count=3)
    emulator.inject("/runs", status=429, count=3)
    project = setup_project(client, "flaky", str(source_repo), progress=lambda _: None, poll_s=0.1).id
    config = load_jobs_config(source_repo / "jobs.yaml")
    create_jobs(client, project, config, progress=lambda _: None)
    trigger_jobs(client, project, config, progress=lambda _: None, waiting=FAST)
    assert runs_log(emulator, project) == ["git_sync", "setup_environment", "launch_ray_cluster"]
    injected = [c for c in emulator.app.calls if c.endswith(("-> 429", "-> 500"))]
    assert len(injected) == 8
    assert len(client.list_jobs(project)) == 3


def test_deploy_cli_end_to_end(emulator: CMLEmulator, source_repo: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CML_API_KEY": emulator.api_key, "CML_HOST": emulator.url, "FORCE_REBUILD": "false"}
    command = [sys.executable, "-m", "ray_serve_cai", "cai", "deploy", "--name", "cli-project", "--git-url",
               str(source_repo), "--jobs-config", str(source_repo / "jobs.yaml"), "--poll-interval", "0.1"]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    project = first.stdout.strip()
    assert runs_log(emulator, project) == ["git_sync", "setup_environment", "launch_ray_cluster"]
    assert emulator.api_key not in first.stdout + first.stderr

    (emulator.project_dir(project) / "FAIL_launch_ray_cluster").touch()
    env["FORCE_REBUILD"] = "true"
    failed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith("ray-serve-cai: error: job 'Launch' failed")
    assert "Traceback" not in failed.stderr


@pytest.mark.parametrize("fault", [{"status": 502}, {"reset": True}], ids=["502 after commit", "reset after commit"])
def test_pipeline_survives_a_fault_after_commit_on_every_call(emulator: CMLEmulator, client: CMLClient,
                                                              source_repo: Path, fault: dict) -> None:
    """Every distinct request (each method and path) is answered once with a 502 or a reset *after* the
    server acted: project, jobs and runs are still made exactly once and the chain runs once."""
    spoiler = emulator.inject("", after=True, each_line=True, **fault)
    project = setup_project(client, "flaky-after", str(source_repo), progress=lambda _: None, poll_s=0.1).id
    config = load_jobs_config(source_repo / "jobs.yaml", env={})
    create_jobs(client, project, config, progress=lambda _: None)
    result = trigger_jobs(client, project, config, progress=lambda _: None, waiting=FAST)
    assert result == dict.fromkeys(config.jobs, "ENGINE_SUCCEEDED")
    assert runs_log(emulator, project) == ["git_sync", "setup_environment", "launch_ray_cluster"]
    assert [p.id for p in client.find_projects("flaky-after")] == [project]
    assert sorted(j.name for j in client.list_jobs(project)) == ["Launch", "Setup", "Sync"]
    assert sum(len(client.list_job_runs(project, j.id)) for j in client.list_jobs(project)) == 3
    spoiled = [c for c in emulator.app.calls if " after " in c]
    assert len(spoiler.hits) == len(spoiled) >= 10  # really every call, writes included
    assert {c.split()[0] for c in spoiled} >= {"GET", "POST"}
    assert any("/runs" in c and c.startswith("POST") for c in spoiled)
