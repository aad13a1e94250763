"""Every create is done exactly once when the server acted but the client saw a 502, a 504, a
connection reset or a read timeout (the emulator's faults *after* the handler): the client looks the
object up before it would send again. And it is still sent again when the failure came before."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cml_emulator import RUNTIME, CMLEmulator

from launchers.cai.client import CMLClient
from launchers.cai.http import RetryPolicy
from launchers.cai.pipeline import setup_project

AFTER = {
    "502 after commit": {"status": 502, "after": True},
    "504 after commit": {"status": 504, "after": True},
    "reset after commit": {"reset": True, "after": True},
    "timeout after commit": {"status": None, "delay": 2.5, "after": True},
    "502 before": {"status": 502},
    "reset before": {"reset": True},
}


@pytest.fixture(params=list(AFTER))
def fault(request: pytest.FixtureRequest) -> dict:
    return AFTER[request.param]


@pytest.fixture
def client(emulator: CMLEmulator) -> Iterator[CMLClient]:  # a short timeout: the stalled answer times out
    with CMLClient(emulator.url, emulator.api_key, timeout=1.0,
                   retry=RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)) as cml_client:
        yield cml_client


def _posts(cml: CMLEmulator, path: str) -> list[str]:
    return [c.rsplit(" -> ", 1)[1] for c in cml.app.calls if c.startswith(f"POST {path} ->")]


def _check_posts(cml: CMLEmulator, path: str, fault: dict) -> None:
    """After the server acted: one POST. Before: the POST was refused, so it went out again."""
    assert len(_posts(cml, path)) == (1 if fault.get("after") else 2), cml.app.calls


def test_job_created_once(emulator: CMLEmulator, client: CMLClient, fault: dict) -> None:
    project = emulator.add_project("jobs")
    emulator.write(project, "j.py")
    emulator.inject(f"POST /api/v2/projects/{project}/jobs", **fault)
    job = client.create_job(project, name="j", script="j.py", runtime_identifier=RUNTIME)
    assert [j.id for j in client.list_jobs(project)] == [job.id]
    _check_posts(emulator, f"/api/v2/projects/{project}/jobs", fault)


def test_run_created_once(emulator: CMLEmulator, client: CMLClient, fault: dict) -> None:
    project = emulator.add_project("runs")
    emulator.write(project, "j.py")
    job = client.create_job(project, name="j", script="j.py", runtime_identifier=RUNTIME)
    emulator.inject(f"POST /api/v2/projects/{project}/jobs/{job.id}/runs", **fault)
    run = client.create_job_run(project, job.id, environment={"A": "1"})
    runs = client.list_job_runs(project, job.id)
    assert [r.id for r in runs] == [run.id] and runs[0].environment["A"] == "1"
    _check_posts(emulator, f"/api/v2/projects/{project}/jobs/{job.id}/runs", fault)


def test_application_created_once(emulator: CMLEmulator, client: CMLClient, fault: dict) -> None:
    project = emulator.add_project("apps")
    emulator.write(project, "idle.py", content="import time\ntime.sleep(60)\n")
    emulator.inject(f"POST /api/v2/projects/{project}/applications", **fault)
    app = client.create_application(project, name="web", subdomain="web", script="idle.py",
                                    runtime_identifier=RUNTIME, environment={"NONCE": "n-1"})
    assert [a.id for a in client.list_applications(project)] == [app.id]
    _check_posts(emulator, f"/api/v2/projects/{project}/applications", fault)
    client.stop_application(project, app.id)


def test_upload_done_once(emulator: CMLEmulator, client: CMLClient, fault: dict) -> None:
    project = emulator.add_project("files")
    emulator.inject(f"POST /api/v2/projects/{project}/files", **fault)
    client.upload_file(project, "dir/once.txt", b"payload")
    assert [f.path for f in client.list_files(project, "dir")] == ["once.txt"]  # no once(1).txt
    assert client.download_file(project, "dir/once.txt") == b"payload"
    _check_posts(emulator, f"/api/v2/projects/{project}/files", fault)


def test_project_created_once(emulator: CMLEmulator, client: CMLClient, fault: dict) -> None:
    emulator.inject("POST /api/v2/projects", **fault)
    project = client.create_project("fresh")
    assert [p.id for p in client.find_projects("fresh")] == [project.id]
    _check_posts(emulator, "/api/v2/projects", fault)


def test_late_application_create_is_adopted_not_doubled(emulator: CMLEmulator, client: CMLClient) -> None:
    """The first create stalls and lands after the client gave up and sent it again: the subdomain is
    taken (409), and the application that holds it is this create's (same nonce): adopted."""
    project = emulator.add_project("late")
    emulator.write(project, "idle.py", content="import time\ntime.sleep(60)\n")
    # the create is handled at 1.5 s; the client times out at 1 s and looks: nothing yet (the answer to
    # that lookup is slow, 0.8 s), so it sends the create again at ~1.8 s: 409, the subdomain is taken
    emulator.inject(f"POST /api/v2/projects/{project}/applications", status=None, delay=1.5)
    emulator.inject(f"GET /api/v2/projects/{project}/applications", status=None, delay=0.8, after=True)
    app = client.create_application(project, name="web", subdomain="web", script="idle.py",
                                    runtime_identifier=RUNTIME, environment={"NONCE": "n-2"})
    assert [a.id for a in client.list_applications(project)] == [app.id]
    assert sorted(c.rsplit(" -> ", 1)[1] for c in emulator.app.calls if c.startswith("POST")) == ["200", "409"]
    client.stop_application(project, app.id)


def test_project_of_a_team_or_another_user_is_found_not_duplicated(emulator: CMLEmulator, client: CMLClient) -> None:
    team = emulator.add_project("shared-ray", owner="teammate", visibility="public")
    emulator.add_project("private-of-someone", owner="stranger", visibility="private")
    lines: list[str] = []
    project = setup_project(client, "shared-ray", "https://example.invalid/x.git", progress=lines.append, poll_s=0.1)
    assert project.id == team and "Found existing project" in " ".join(lines)
    assert not [c for c in emulator.app.calls if c.startswith("POST /api/v2/projects")]
    assert [c for c in emulator.app.calls if c.startswith("GET /api/v2/projects ")]
    assert client.find_projects("private-of-someone") == []  # not accessible: not listed


def test_a_name_taken_meanwhile_is_adopted(emulator: CMLEmulator, client: CMLClient, tmp_path: Path) -> None:
    """The search finds nothing (here: an empty first page, as from a lagging replica), then the create
    is refused because the name exists (a parallel run made it): looked up again and used, not doubled."""
    raced = emulator.add_project("raced")
    emulator.inject("GET /api/v2/projects", status=200, body=b'{"projects": []}')
    project = setup_project(client, "raced", str(tmp_path), progress=lambda _: None, poll_s=0.1)
    assert project.id == raced
    assert [c.rsplit(" -> ", 1)[1] for c in emulator.app.calls if c.startswith("POST /api/v2/projects ")] == ["409"]
    assert [p.id for p in client.find_projects("raced")] == [raced]
