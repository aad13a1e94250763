"""The emulator answers like the CML API: what the spec says, and grpc-gateway's defaults where it is silent."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
from cml_emulator import RUNTIME, CMLEmulator


@pytest.fixture
def api(emulator: CMLEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, headers={"Authorization": f"Bearer {emulator.api_key}"},
                      timeout=10) as client:
        yield client


def _is_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert set(error) == {"error", "code", "message", "details"}, error
    assert message in error["message"], error


@pytest.mark.parametrize("body, problem", [
    ({"name": "a", "subdomain": "a", "script": "s.py", "cpu": "lots", "memory": 1}, "'lots' is not of type"),
    ({"name": "a", "subdomain": "a", "script": "s.py", "cpu": 1, "memory": 1, "nvidia_gpu": 2**40}, "greater than"),
    ({"name": "a", "subdomain": "Bad_Sub", "script": "s.py", "cpu": 1, "memory": 1}, "invalid subdomain"),
    ({"name": "a", "subdomain": "a", "script": "s.py", "cpu": -1}, "cpu must not be negative"),
])
def test_rejects_what_the_api_rejects(emulator: CMLEmulator, api: httpx.Client, body: dict, problem: str) -> None:
    project = emulator.add_project("strict")
    response = api.post(f"/api/v2/projects/{project}/applications", json=body)
    _is_error(response, 400, problem)
    assert response.json()["code"] == 3


def test_unknown_fields_and_parameters_are_discarded_and_recorded(emulator: CMLEmulator, api: httpx.Client) -> None:
    """grpc-gateway's default: unknown JSON fields and query parameters are dropped, not refused.
    The emulator records them so the client's own tests can assert it never sends any."""
    project = emulator.add_project("lenient")
    emulator.write(project, "s.py")
    created = api.post(f"/api/v2/projects/{project}/applications",
                       json={"name": "a", "subdomain": "a", "script": "s.py", "gpus": 1, "cpu": 2,
                             "runtime_identifier": RUNTIME})
    assert created.status_code == 200, created.text
    assert "gpus" not in created.json() and created.json()["cpu"] == 2
    assert api.get("/api/v2/projects", params={"pagesize": 5}).status_code == 200
    assert emulator.app.ignored == ["CreateApplication: body field 'gpus'", "ListProjects: query parameter 'pagesize'"]
    emulator.app.ignored.clear()


def test_colon_verbs_take_no_body(emulator: CMLEmulator, api: httpx.Client) -> None:
    project = emulator.add_project("verbs")
    stop = api.post(f"/api/v2/projects/{project}/applications/x:stop", json={"force": True})
    _is_error(stop, 400, "takes no request body")


def test_create_application_defaults_cpu_and_memory_to_one(emulator: CMLEmulator, api: httpx.Client) -> None:
    project = emulator.add_project("defaults")
    emulator.write(project, "s.py")
    body = {"name": "a", "subdomain": "a", "script": "s.py", "runtime_identifier": RUNTIME}
    created = api.post(f"/api/v2/projects/{project}/applications", json=body)
    assert created.status_code == 200, created.text
    assert (created.json()["cpu"], created.json()["memory"], created.json()["nvidia_gpu"]) == (1, 1, 0)


@pytest.mark.parametrize("size, problem", [(-1, "page_size must not be negative"), (2**31, "page_size"),
                                           ("ten", "is not an integer")])
def test_page_size_out_of_range_is_refused(emulator: CMLEmulator, api: httpx.Client, size: object,
                                           problem: str) -> None:
    _is_error(api.get("/api/v2/projects", params={"page_size": size}), 400, problem)


def test_page_size_zero_means_the_default_and_paging_ends(emulator: CMLEmulator, api: httpx.Client) -> None:
    for i in range(12):
        emulator.add_project(f"p{i}")
    first = api.get("/api/v2/projects", params={"page_size": 0}).json()
    assert len(first["projects"]) == 10
    rest = api.get("/api/v2/projects", params={"page_size": 0, "page_token": first["next_page_token"]}).json()
    assert len(rest["projects"]) == 2 and not rest.get("next_page_token")
    bad = base64.urlsafe_b64encode(b"-5").decode()
    _is_error(api.get("/api/v2/projects", params={"page_token": bad}), 400, "invalid page_token")


def test_list_job_runs_filters_by_status_as_the_spec_example_does(emulator: CMLEmulator, api: httpx.Client) -> None:
    project = emulator.add_project("runs")
    (emulator.project_dir(project) / "ok.py").write_text("")
    job = api.post(f"/api/v2/projects/{project}/jobs", json={"name": "j", "script": "ok.py",
                                                             "runtime_identifier": RUNTIME}).json()
    run = api.post(f"/api/v2/projects/{project}/jobs/{job['id']}/runs", json={}).json()
    runs = f"/api/v2/projects/{project}/jobs/{job['id']}/runs"
    scheduling = api.get(runs, params={"search_filter": '{"status":"scheduling"}'})
    assert scheduling.status_code == 200, scheduling.text
    assert [r["id"] for r in scheduling.json()["job_runs"]] == [run["id"]]
    assert api.get(runs, params={"search_filter": '{"status":"running"}'}).json().get("job_runs", []) == []
    by_id = api.get(runs, params={"search_filter": f'{{"id":"{run["id"]}"}}'})
    assert [r["id"] for r in by_id.json()["job_runs"]] == [run["id"]]


@pytest.mark.parametrize("content_type, body", [
    ("multipart/form-data; boundary=xyz", b"--xyz\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--xyz--\r\n"),
    ("multipart/form-data", b"no boundary at all"),
    ("application/json", b"{}"),
])
def test_malformed_upload_is_a_400_and_recorded(emulator: CMLEmulator, api: httpx.Client, content_type: str,
                                               body: bytes) -> None:
    project = emulator.add_project("uploads")
    response = api.post(f"/api/v2/projects/{project}/files", content=body, headers={"content-type": content_type})
    _is_error(response, 400, "multipart")
    assert emulator.app.calls[-1] == f"POST /api/v2/projects/{project}/files -> 400"


def test_an_emulator_crash_is_a_recorded_json_500(emulator: CMLEmulator, api: httpx.Client,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from cml_emulator import handlers

    def broken(store: object) -> dict:
        raise RuntimeError("boom")

    monkeypatch.setitem(handlers.HANDLERS, "ListRuntimes", broken)
    _is_error(api.get("/api/v2/runtimes"), 500, "emulator bug: RuntimeError: boom")
    assert emulator.app.calls[-1] == "GET /api/v2/runtimes -> 500"
    assert emulator.app.violations == ["ListRuntimes: RuntimeError: boom"]
    emulator.app.violations.clear()
