"""The CML client against the emulator: paging, exact names, retries, errors, secrets, quirks."""

from __future__ import annotations

import json
import logging
import time

import pytest
from cml_emulator import RUNTIME, CMLEmulator
from cml_emulator.workloads import wait_gone

from launchers.cai.client import CMLClient
from launchers.cai.errors import CAIError, CMLAPIError, CMLAuthError, CMLNotFoundError
from launchers.cai.http import RetryPolicy


def _calls(cml: CMLEmulator, fragment: str) -> list[str]:
    return [c for c in cml.app.calls if fragment in c]


def test_lists_page_through_more_than_ten(emulator: CMLEmulator, client: CMLClient) -> None:
    for i in range(23):
        emulator.add_project(f"proj-{i}")
    emulator.add_project("proj-1-extra")
    found = client.find_projects("proj-1")
    assert [p.name for p in found] == ["proj-1"]  # server matched proj-1, proj-10..19, proj-1-extra
    assert len(_calls(emulator, "GET /api/v2/projects ->")) == 2  # 12 substring hits: two pages of 10

    project = emulator.add_project("apps")
    emulator.write(project, "idle.py", content="import time\ntime.sleep(60)\n")
    for i in range(12):
        client.create_application(project, name=f"app-{i}", subdomain=f"app-{i}", script="idle.py",
                                  cpu=1, memory=1, runtime_identifier=RUNTIME)
    apps = client.list_applications(project)
    assert sorted(a.name for a in apps) == sorted(f"app-{i}" for i in range(12))
    assert len(_calls(emulator, f"GET /api/v2/projects/{project}/applications ->")) == 2


def test_wire_quirks_are_absorbed(emulator: CMLEmulator, client: CMLClient) -> None:
    project = emulator.add_project("quirks")
    emulator.write(project, "a.py", "b.py")
    parent = client.create_job(project, name="parent", script="a.py", cpu=1, memory=1, timeout=300,
                               environment={"A": "1"}, runtime_identifier=RUNTIME)
    child = client.create_job(project, name="child", script="b.py", cpu=1, memory=1, parent_job_id=parent.id,
                              runtime_identifier=RUNTIME)
    assert parent.timeout == 300 and parent.environment == {"A": "1"}  # int64 string, JSON string
    assert child.parent_id == parent.id  # sent as parent_job_id, returned as parent_id
    updated = client.update_job(project, child.id, timeout="600", environment=json.dumps({"B": "2"}))
    assert updated.timeout == 600 and updated.environment == {"B": "2"}


def test_retries_429_and_500(emulator: CMLEmulator, client: CMLClient) -> None:
    project = emulator.add_project("retry")
    emulator.write(project, "j.py")
    emulator.inject("GET /api/v2/projects", status=429, count=2)
    emulator.inject(f"POST /api/v2/projects/{project}/jobs", status=503, count=1)  # before the handler
    assert client.find_projects("retry")[0].id == project
    client.create_job(project, name="j", script="j.py", cpu=1, memory=1, runtime_identifier=RUNTIME)
    assert len(_calls(emulator, "-> 429")) == 2 and len(_calls(emulator, "-> 503")) == 1
    # the 503 came before the job existed: looked up (none), then sent again: one job
    assert len(_calls(emulator, f"POST /api/v2/projects/{project}/jobs ->")) == 2
    assert len(client.list_jobs(project)) == 1


def test_gives_up_after_attempts_with_readable_error(emulator: CMLEmulator, client: CMLClient) -> None:
    emulator.inject("GET /api/v2/projects", status=500, count=10)
    with pytest.raises(CMLAPIError, match=r"GET /api/v2/projects on http://127\.0\.0\.1:\d+ returned HTTP 500"):
        client.find_projects("x")
    assert len(_calls(emulator, "-> 500")) == 4


def test_read_timeout_retried_for_get_for_post_only_after_a_lookup(emulator: CMLEmulator) -> None:
    project = emulator.add_project("slow")
    emulator.write(project, "j.py", "k.py")
    with CMLClient(emulator.url, emulator.api_key, timeout=1.0, retry=RetryPolicy(3, 0.01, 0.05)) as client:
        emulator.inject(f"GET /api/v2/projects/{project}", status=None, delay=3.0)
        assert client.get_project(project).name == "slow"
        # stalled and dropped before the handler: the lookup finds no job, so the create is sent again
        emulator.inject(f"POST /api/v2/projects/{project}/jobs", status=504, delay=3.0)
        assert client.create_job(project, name="j", script="j.py", runtime_identifier=RUNTIME).name == "j"
        assert len(_calls(emulator, f"POST /api/v2/projects/{project}/jobs")) == 2
        # made, then the answer stalled: the lookup finds it, nothing is sent again
        emulator.inject(f"POST /api/v2/projects/{project}/jobs", status=None, delay=3.0, after=True)
        made = client.create_job(project, name="k", script="k.py", runtime_identifier=RUNTIME)
        assert len(_calls(emulator, f"POST /api/v2/projects/{project}/jobs")) == 3
        assert sorted(j.name for j in client.list_jobs(project)) == ["j", "k"] and made.name == "k"


def test_bad_key_and_missing_objects(emulator: CMLEmulator, client: CMLClient) -> None:
    with CMLClient(emulator.url, "wrong-key-123") as bad:
        with pytest.raises(CMLAuthError, match=f"^CML API key rejected for {emulator.url}$"):
            bad.find_projects("x")
    with pytest.raises(CMLNotFoundError):
        client.get_project("nope-nope-nope-nope")
    project = emulator.add_project("p")
    assert client.file_exists(project, "no/such/file.txt") is False


def test_api_key_never_shown(emulator: CMLEmulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = CMLClient(emulator.url, emulator.api_key, retry=RetryPolicy(2, 0.01, 0.01))
    emulator.inject("GET /api/v2/projects", status=500, count=5)
    with pytest.raises(CMLAPIError) as info:
        client.find_projects("x")
    shown = " ".join([repr(client), repr(client.http), str(info.value), repr(info.value), caplog.text])
    assert emulator.api_key not in shown
    assert "retrying" in caplog.text  # the retry was logged, without the key


def test_upload_never_overwrites(emulator: CMLEmulator, client: CMLClient) -> None:
    project = emulator.add_project("files")
    client.upload_file(project, "dir/run.py", b"one")
    client.upload_file(project, "dir/run.py", b"two")
    names = sorted(f.path for f in client.list_files(project, "dir"))
    assert names == ["run(1).py", "run.py"]  # entries are names relative to the listed directory
    assert client.download_file(project, "dir/run.py") == b"one"


def test_file_exists_at_every_depth(emulator: CMLEmulator, client: CMLClient) -> None:
    project = emulator.add_project("exists")
    client.upload_file(project, "top.txt", b"x")
    client.upload_file(project, "dir/sub/deep.txt", b"y")
    assert client.file_exists(project, "top.txt") is True
    assert client.file_exists(project, "./top.txt") is True
    assert client.file_exists(project, "dir/sub/deep.txt") is True
    assert client.file_exists(project, "dir/sub") is False  # a directory is not a file
    assert client.file_exists(project, "top.txt/x") is False
    assert client.file_exists(project, "no/such/file.txt") is False
    assert sorted(f.path for f in client.list_files(project, "")) == ["dir", "top.txt"]
    # Every listing named a path the API defines: the root as %2F, never a bare ".../files".
    listings = _calls(emulator, f"GET /api/v2/projects/{project}/files")
    assert listings and all(c.split()[1].startswith(f"/api/v2/projects/{project}/files/") for c in listings)
    assert all(c.endswith("-> 200") for c in listings)


def test_file_exists_raises_what_it_cannot_answer(emulator: CMLEmulator, client: CMLClient) -> None:
    with pytest.raises(CMLNotFoundError, match="project nope-nope-nope-nope not found"):
        client.file_exists("nope-nope-nope-nope", "top.txt")
    project = emulator.add_project("errors")
    emulator.inject(f"GET /api/v2/projects/{project}/files/", status=500, count=4)  # every attempt
    with pytest.raises(CMLAPIError, match="returned HTTP 500"):
        client.file_exists(project, "top.txt")
    emulator.inject(f"GET /api/v2/projects/{project}/files/", status=400, count=1)
    with pytest.raises(CMLAPIError, match="returned HTTP 400"):
        client.file_exists(project, "top.txt")
    with pytest.raises(CAIError, match="may not contain '..'"):
        client.file_exists(project, "../etc/passwd")


def test_emulator_checks_its_own_responses(emulator: CMLEmulator, client: CMLClient,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake that answers outside the contract would make every other test meaningless."""
    from cml_emulator import handlers

    project = emulator.add_project("selfcheck")
    monkeypatch.setitem(handlers.HANDLERS, "GetProject", lambda store, project_id: {"id": project_id, "size": 3})
    with pytest.raises(CMLAPIError, match="HTTP 500: emulator response violates the spec"):
        client.get_project(project)
    assert emulator.app.violations and "'size' was unexpected" in emulator.app.violations[0]
    emulator.app.violations.clear()


def test_restart_runs_the_script_again(emulator: CMLEmulator, client: CMLClient) -> None:
    project = emulator.add_project("restart")
    (emulator.project_dir(project) / "app.py").write_text(
        "import os, time\nopen('starts.log', 'a').write(os.environ['CDSW_IP_ADDRESS'] + '\\n')\ntime.sleep(120)\n")
    app = client.create_application(project, name="web", subdomain="web", script="app.py", cpu=1, memory=1,
                                    runtime_identifier=RUNTIME)

    def wait_for(status: str) -> None:
        for _ in range(100):
            if client.get_application(project, app.id).status == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"application never reached {status}")

    starts = emulator.project_dir(project) / "starts.log"

    def wait_for_starts(count: int, timeout_s: float = 30) -> None:
        # RUNNING means the process was spawned; a loaded machine may take seconds to run its first line.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if starts.exists() and len(starts.read_text().split()) == count:
                return
            time.sleep(0.1)
        raise AssertionError(f"expected {count} start(s) in starts.log")

    wait_for("APPLICATION_RUNNING")
    wait_for_starts(1)
    first = emulator.workload_pids()
    assert client.restart_application(project, app.id).status == "APPLICATION_STOPPING"
    wait_for("APPLICATION_RUNNING")
    wait_for_starts(2)
    assert wait_gone(first, timeout_s=10) == set()  # the first process tree is gone
    client.stop_application(project, app.id)
    wait_for("APPLICATION_STOPPED")
    client.delete_application(project, app.id)
    assert client.list_applications(project) == []


def test_runtimes_are_paged_and_filtered_exactly(emulator: CMLEmulator, client: CMLClient) -> None:
    emulator.store.runtimes = [
        {"image_identifier": f"docker.example/ml-runtime-python3.{minor}:{build}", "editor": "JupyterLab",
         "kernel": f"Python 3.{minor}", "edition": "Standard", "description": "", "full_version": build,
         "status": "ENABLED", "register_user_id": 0}
        for minor in (10, 11) for build in ("2025.01", "2025.02", "2025.03", "2025.04", "2025.05", "2025.06")]
    assert len(client.list_runtimes()) == 12  # two pages
    python311 = client.list_runtimes(kernel="Python 3.11")
    assert len(python311) == 6 and {r.kernel for r in python311} == {"Python 3.11"}
    # the server's substring filter would also match "Python 3.1" against 3.10 and 3.11
    assert client.list_runtimes(kernel="Python 3.1") == []


def test_git_tokens_are_redacted() -> None:
    from launchers.cai.pipeline.project import redact_url

    assert redact_url("https://x-access-token:ghp_secret@github.com/o/r.git") == "https://***@github.com/o/r.git"
    assert redact_url("https://github.com/o/r.git") == "https://github.com/o/r.git"
