"""The runtime of jobs and applications: looked up by editor/kernel/edition (defaults documented,
overridable, validated), or given; sent on every create; a clear error naming what there is. And the
emulator refuses a create without one, or with a script the project does not have, as CML does."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from cml_emulator import RUNTIME, CMLEmulator

from launchers.cai.client import CMLClient
from launchers.cai.config import load_config
from launchers.cai.errors import CAIError
from launchers.cai.pipeline import create_jobs, load_jobs_config
from launchers.cai.runtimes import RuntimeFilter, choose_runtime

OLDER = RUNTIME.replace("2025.01.3-b8", "2024.10.1-b12")
JUPYTER = RUNTIME.replace("pbj-workbench", "jupyterlab")


def test_default_filter_picks_the_newest_enabled_match(emulator: CMLEmulator, client: CMLClient) -> None:
    assert RuntimeFilter().describe() == "editor='PBJ Workbench', kernel='Python 3.11', edition='Standard'"
    assert choose_runtime(client, RuntimeFilter()) == RUNTIME  # not 2024.10, not the deprecated 2023.08
    gpu = choose_runtime(client, RuntimeFilter(edition="Nvidia GPU"))
    assert "-cuda:" in gpu
    assert choose_runtime(client, RuntimeFilter(), OLDER) == OLDER  # given: used as is, once checked
    assert [c for c in emulator.app.calls if "/runtimes" in c and not c.endswith("-> 200")] == []


def test_no_match_lists_the_candidates_in_one_line(emulator: CMLEmulator, client: CMLClient) -> None:
    with pytest.raises(CAIError) as info:
        choose_runtime(client, RuntimeFilter(kernel="Python 3.13"))
    message = str(info.value)
    assert message.startswith(f"no enabled runtime on {emulator.url} matches editor='PBJ Workbench', "
                              "kernel='Python 3.13', edition='Standard'; runtimes there")
    assert "PBJ Workbench / Python 3.11 / Standard; PBJ Workbench / Python 3.11 / Nvidia GPU" in message or \
        "PBJ Workbench / Python 3.11 / Nvidia GPU; PBJ Workbench / Python 3.11 / Standard" in message
    assert "JupyterLab / Python 3.11 / Standard" in message and "Python 3.9" not in message  # disabled: not offered
    assert "\n" not in message and "runtime_identifier" in message
    with pytest.raises(CAIError, match=r"runtime_identifier 'docker.example/nope:1' is not an enabled runtime"):
        choose_runtime(client, RuntimeFilter(), "docker.example/nope:1")
    emulator.store.runtimes = []
    with pytest.raises(CAIError, match=r"runtimes there \(editor / kernel / edition\): none"):
        choose_runtime(client, RuntimeFilter())


def test_runtime_config_is_validated(tmp_path: Path) -> None:
    base = {"host": "https://ml.example.site", "project_id": "p"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cai": {**base, "runtime": {"kernel": "Python 3.12", "edition": "Nvidia GPU"}}}))
    config = load_config(path, env={})
    assert (config.cai.runtime.editor, config.cai.runtime.kernel, config.cai.runtime.edition) == (
        "PBJ Workbench", "Python 3.12", "Nvidia GPU")
    path.write_text(yaml.safe_dump({"cai": {**base, "runtime": {"kernal": "Python 3.12"}}}))
    with pytest.raises(CAIError, match=r"cai\.runtime\.kernal: Extra inputs are not permitted"):
        load_config(path, env={})
    path.write_text(yaml.safe_dump({"cai": {**base, "runtime": {"editor": ""}}}))
    with pytest.raises(CAIError, match=r"cai\.runtime\.editor: String should have at least 1 character"):
        load_config(path, env={})
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({"jobs": {"a": {"name": "A", "script": "a.py"}}, "runtime": {"edition": 3}}))
    with pytest.raises(CAIError, match=r"runtime\.edition: Input should be a valid string"):
        load_jobs_config(jobs, env={})
    jobs.write_text(yaml.safe_dump({"jobs": {"a": {"name": "A", "script": "a.py"}}}))
    assert load_jobs_config(jobs, env={"RUNTIME_IDENTIFIER": OLDER}).runtime_identifier == OLDER


def _jobs_file(tmp_path: Path, **top: object) -> Path:
    path = tmp_path / "jobs.yaml"
    jobs = {"one": {"name": "One", "script": "one.py", "cpu": 1, "memory": 1},
            "two": {"name": "Two", "script": "two.py", "cpu": 1, "memory": 1, "parent_job_key": "one"}}
    path.write_text(yaml.safe_dump({"jobs": jobs, **top}))
    return path


def test_create_jobs_sends_the_runtime_and_keeps_a_matching_one(emulator: CMLEmulator, client: CMLClient,
                                                                tmp_path: Path) -> None:
    project = emulator.add_project("rt")
    emulator.write(project, "one.py", "two.py")
    config = load_jobs_config(_jobs_file(tmp_path), env={})
    ids = create_jobs(client, project, config, progress=lambda _: None)
    assert {j.runtime_identifier for j in client.list_jobs(project)} == {RUNTIME}
    client.update_job(project, ids["one"], runtime_identifier=OLDER)  # still matches the filter: kept
    client.update_job(project, ids["two"], runtime_identifier=JUPYTER)  # another editor: replaced
    lines: list[str] = []
    create_jobs(client, project, config, progress=lines.append)
    jobs = {j.name: j.runtime_identifier for j in client.list_jobs(project)}
    assert jobs == {"One": OLDER, "Two": RUNTIME}
    assert any("up to date" in line for line in lines) and any("updated job 'two'" in line for line in lines)


def test_create_jobs_without_a_matching_runtime_creates_nothing(emulator: CMLEmulator, client: CMLClient,
                                                                tmp_path: Path) -> None:
    project = emulator.add_project("none")
    config = load_jobs_config(_jobs_file(tmp_path, runtime={"kernel": "R 4.4"}), env={})
    with pytest.raises(CAIError, match=r"no enabled runtime .* kernel='R 4.4'"):
        create_jobs(client, project, config, progress=lambda _: None)
    assert not [c for c in emulator.app.calls if c.startswith("POST")]


@pytest.mark.parametrize("what, body, problem", [
    ("jobs", {"name": "j", "script": "s.py"}, "runtime_identifier is required for projects using ML Runtimes"),
    ("jobs", {"name": "j", "script": "s.py", "runtime_identifier": "docker.example/x:1"},
     "runtime_identifier 'docker.example/x:1' is not a registered, enabled runtime"),
    ("jobs", {"name": "j", "script": "missing.py", "runtime_identifier": RUNTIME},
     "script 'missing.py' does not exist in the project"),
    ("applications", {"name": "a", "subdomain": "a", "script": "s.py"}, "runtime_identifier is required"),
    ("applications", {"name": "a", "subdomain": "a", "script": "dir", "runtime_identifier": RUNTIME},
     "script 'dir' does not exist in the project"),
])
def test_emulator_refuses_creates_the_api_refuses(emulator: CMLEmulator, what: str, body: dict,
                                                  problem: str) -> None:
    project = emulator.add_project("strict")
    emulator.write(project, "s.py", "dir/inside.py")
    with httpx.Client(base_url=emulator.url, headers={"Authorization": f"Bearer {emulator.api_key}"}) as api:
        response = api.post(f"/api/v2/projects/{project}/{what}", json=body)
        assert response.status_code == 400 and problem in response.json()["message"], response.text
        good = {**body, "script": "s.py", "runtime_identifier": RUNTIME}
        assert api.post(f"/api/v2/projects/{project}/{what}", json=good).status_code == 200


def test_client_errors_name_the_refusal(emulator: CMLEmulator, client: CMLClient) -> None:
    project = emulator.add_project("refused")
    with pytest.raises(CAIError, match="returned HTTP 400: script 'nope.py' does not exist in the project"):
        client.create_job(project, name="j", script="nope.py", runtime_identifier=RUNTIME)
    assert len([c for c in emulator.app.calls if c.startswith("POST")]) == 1  # a 400 is not retried
