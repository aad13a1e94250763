"""One function per emulated operation. Each gets the store, path params, query and body and
returns the wire object; ``APIError`` becomes a grpc-gateway style error response."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .store import USER, APIError, Record, Store, new_id, now

SUBDOMAIN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
DEFAULT_PAGE = 10
Handler = Callable[..., Any]
HANDLERS: dict[str, Handler] = {}


def op(op_id: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[op_id] = fn
        return fn
    return register


def _dig(obj: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part, "") if isinstance(obj, dict) else ""
    return obj


def listing(items: list[dict], key: str, query: dict[str, str], search_keys: list[str],
            sort_keys: list[str]) -> dict[str, Any]:
    """Filter (substring, case-sensitive, like the server), sort, and paginate (default page 10)."""
    if raw := query.get("search_filter"):
        try:
            search = json.loads(raw)
            assert isinstance(search, dict)
        except (ValueError, AssertionError):
            raise APIError(400, 3, f"search_filter is not a JSON object: {raw!r}") from None
        for name, value in search.items():
            if name not in search_keys:
                raise APIError(400, 3, f"unsupported search filter key {name!r}")
            items = [i for i in items if str(value) in str(_dig(i, name))
                     or str(value) in re.sub(r"^(APPLICATION|ENGINE)_", "", str(_dig(i, name))).lower()]
    for part in reversed([p for p in (query.get("sort") or "").split(",") if p]):
        name = part.lstrip("+-")
        if name not in sort_keys:
            raise APIError(400, 3, f"unsupported sort key {name!r}")
        items = sorted(items, key=lambda i: str(_dig(i, name)), reverse=part.startswith("-"))
    size = int(query.get("page_size") or 0)  # an int32 already (checked against the spec)
    if size < 0:  # the spec is silent; AIP-158: negative is INVALID_ARGUMENT, 0 lets the server choose
        raise APIError(400, 3, "page_size must not be negative")
    size = size or DEFAULT_PAGE
    token = query.get("page_token") or ""
    try:
        offset = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        if offset < 0:
            raise ValueError(offset)
    except ValueError:
        raise APIError(400, 3, "invalid page_token") from None
    page = {key: items[offset:offset + size]}
    if offset + size < len(items):
        page["next_page_token"] = base64.urlsafe_b64encode(str(offset + size).encode()).decode()
    return page


def _in_project(records: dict[str, Record], store: Store, project_id: str, obj_id: str, what: str) -> Record:
    store.project(project_id)
    rec = records.get(obj_id)
    if rec is None or rec.project_id != project_id:
        raise APIError(404, 5, f"{what} {obj_id} not found")
    return rec


def _require(body: dict, *names: str) -> None:
    for name in names:
        if body.get(name) in (None, "", 0):
            raise APIError(400, 3, f"{name} is required")


def _check_runtime(store: Store, project: Record, body: dict, *, required: bool = True) -> None:
    """ML Runtimes projects (every project here) need a known, usable runtime_identifier."""
    identifier = body.get("runtime_identifier") or ""
    if not identifier:
        if required and project.wire.get("default_engine_type") == "ml_runtime":
            raise APIError(400, 3, "runtime_identifier is required for projects using ML Runtimes")
        return
    if store.runtime(identifier) is None:
        raise APIError(400, 3, f"runtime_identifier {identifier!r} is not a registered, enabled runtime")


def _check_script(store: Store, project_id: str, script: str) -> None:
    if not _safe(store, project_id, script).is_file():
        raise APIError(400, 3, f"script {script!r} does not exist in the project")


# -- projects -------------------------------------------------------------------------------------
def _visible(wire: dict, query: dict) -> bool:
    """The caller's own projects; with include_public_projects (or include_all_projects, the same for
    a non-admin) also every project it can access: here, those not private."""
    if wire["owner"]["username"] == USER["username"]:
        return True
    wide = "true" in (query.get("include_public_projects"), query.get("include_all_projects"))
    return wide and wire.get("visibility") != "private"


@op("ListProjects")
def list_projects(store: Store, query: dict, search_keys: list, sort_keys: list) -> dict:
    projects = [r.wire for r in store.projects.values() if _visible(r.wire, query)]
    return listing(projects, "projects", query, search_keys, sort_keys)


@op("CreateProject")
def create_project(store: Store, body: dict) -> dict:
    return store.create_project(body)


@op("GetProject")
def get_project(store: Store, project_id: str) -> dict:
    return store.project(project_id).wire


# -- jobs -----------------------------------------------------------------------------------------
JOB_FIELDS = ("name", "script", "cpu", "memory", "nvidia_gpu", "kernel", "arguments", "runtime_identifier",
              "kill_on_timeout", "schedule")


@op("ListJobs")
def list_jobs(store: Store, project_id: str, query: dict, search_keys: list, sort_keys: list) -> dict:
    store.project(project_id)
    jobs = [r.wire for r in store.jobs.values() if r.project_id == project_id]
    return listing(jobs, "jobs", query, search_keys, sort_keys)


def _check_parent(store: Store, project_id: str, parent: str, job_id: str = "") -> None:
    if parent and (parent not in store.jobs or store.jobs[parent].project_id != project_id or parent == job_id):
        raise APIError(400, 3, f"parent job {parent} not found in project {project_id}")


@op("CreateJob")
def create_job(store: Store, project_id: str, body: dict) -> dict:
    project = store.project(project_id)
    _require(body, "name", "script")
    if body.get("project_id") not in (None, project_id):
        raise APIError(400, 3, "project_id in body does not match the path")
    parent = body.get("parent_job_id") or body.get("parent_id") or ""
    _check_parent(store, project_id, parent)
    _check_runtime(store, project, body)
    _check_script(store, project_id, body["script"])
    wire = {"id": new_id(), "created_at": now(), "updated_at": now(), "creator": USER, "owner": USER,
            "engine_image_id": "1", "english_schedule": "", "type": "dependent" if parent else "manual",
            "paused": False, "timezone": "UTC", "timeout": str(body.get("timeout") or 0), "parent_id": parent,
            "environment": json.dumps(body.get("environment") or {}), "cpu": 1.0, "memory": 1.0,
            "nvidia_gpu": 0, "kernel": "python3", "arguments": "", "runtime_identifier": "",
            "project": {"public_identifier": project_id, "name": project.wire["name"]}}
    wire |= {k: body[k] for k in JOB_FIELDS if k in body}
    store.jobs[wire["id"]] = Record(wire, project_id=project_id)
    return wire


@op("UpdateJob")
def update_job(store: Store, project_id: str, job_id: str, body: dict) -> dict:
    rec = _in_project(store.jobs, store, project_id, job_id, "job")
    _check_runtime(store, store.project(project_id), body, required=False)
    if body.get("script"):
        _check_script(store, project_id, body["script"])
    if "parent_id" in body:
        _check_parent(store, project_id, body["parent_id"], job_id)
        rec.wire["parent_id"] = body["parent_id"]
        rec.wire["type"] = "dependent" if body["parent_id"] else "manual"
    if "environment" in body:  # a JSON string in the Job message
        try:
            json.loads(body["environment"] or "{}")
        except ValueError:
            raise APIError(400, 3, "environment must be a JSON object string") from None
        rec.wire["environment"] = body["environment"]
    if "timeout" in body:
        rec.wire["timeout"] = body["timeout"]
    rec.wire |= {k: body[k] for k in JOB_FIELDS if k in body}
    rec.wire["updated_at"] = now()
    return rec.wire


@op("CreateJobRun")
def create_job_run(store: Store, project_id: str, job_id: str, body: dict) -> dict:
    store.project(project_id)
    return store.create_run(project_id, job_id, body.get("environment"))


@op("ListJobRuns")
def list_job_runs(store: Store, project_id: str, job_id: str, query: dict, search_keys: list,
                  sort_keys: list) -> dict:
    _in_project(store.jobs, store, project_id, job_id, "job")
    runs = [r.wire for r in store.runs.values() if r.wire["job_id"] == job_id]
    return listing(runs, "job_runs", query, search_keys, sort_keys + ["created_at"])


@op("GetJobRun")
def get_job_run(store: Store, project_id: str, job_id: str, run_id: str) -> dict:
    rec = _in_project(store.runs, store, project_id, run_id, "job run")
    if rec.wire["job_id"] != job_id:
        raise APIError(404, 5, f"job run {run_id} not found")
    return rec.wire


# -- applications ---------------------------------------------------------------------------------
@op("ListApplications")
def list_applications(store: Store, project_id: str, query: dict, search_keys: list, sort_keys: list) -> dict:
    store.project(project_id)
    apps = [r.wire for r in store.apps.values() if r.project_id == project_id]
    return listing(apps, "applications", query, search_keys, sort_keys)


@op("CreateApplication")
def create_application(store: Store, project_id: str, body: dict) -> dict:
    store.project(project_id)
    _require(body, "name", "subdomain", "script")
    if not SUBDOMAIN.match(body["subdomain"]):
        raise APIError(400, 3, f"invalid subdomain {body['subdomain']!r}: must match {SUBDOMAIN.pattern}")
    if any(r.wire["subdomain"] == body["subdomain"] for r in store.apps.values()):
        raise APIError(409, 6, f"subdomain {body['subdomain']!r} already exists")
    for key in ("cpu", "memory", "nvidia_gpu"):
        if (body.get(key) or 0) < 0:
            raise APIError(400, 3, f"{key} must not be negative")
    _check_runtime(store, store.project(project_id), body)
    _check_script(store, project_id, body["script"])
    wire = {"id": new_id(), "name": body["name"], "description": body.get("description", ""), "creator": USER,
            "script": body["script"], "subdomain": body["subdomain"], "status": "APPLICATION_STARTING",
            "created_at": now(), "updated_at": now(), "starting_at": now(), "kernel": body.get("kernel", "python3"),
            # proto3: an absent or zero field is unset; the spec documents the defaults (cpu 1, memory 1)
            "cpu": body.get("cpu") or 1, "memory": body.get("memory") or 1, "nvidia_gpu": body.get("nvidia_gpu", 0),
            "bypass_authentication": body.get("bypass_authentication", False),
            "environment": json.dumps(body.get("environment") or {}),
            "runtime_identifier": body.get("runtime_identifier", ""), "runtime_addon_identifiers": [],
            "run_as": 0, "cdv_app": False, "accelerator_label_id": "0"}
    store.apps[wire["id"]] = Record(wire, project_id=project_id, due=time.monotonic() + store.timing.app_start)
    return wire


@op("GetApplication")
def get_application(store: Store, project_id: str, application_id: str) -> dict:
    return _in_project(store.apps, store, project_id, application_id, "application").wire


@op("StopApplication")
def stop_application(store: Store, project_id: str, application_id: str) -> dict:
    rec = _in_project(store.apps, store, project_id, application_id, "application")
    if rec.wire["status"] in ("APPLICATION_STARTING", "APPLICATION_RUNNING"):
        store.stop_app(rec)
    return rec.wire


@op("RestartApplication")
def restart_application(store: Store, project_id: str, application_id: str) -> dict:
    rec = _in_project(store.apps, store, project_id, application_id, "application")
    store.stop_app(rec, then="APPLICATION_STARTING")
    return rec.wire


@op("DeleteApplication")
def delete_application(store: Store, project_id: str, application_id: str) -> dict:
    rec = _in_project(store.apps, store, project_id, application_id, "application")
    if rec.workload is not None:
        store.stop_app(rec)
    del store.apps[application_id]
    return {}


# -- files and runtimes ---------------------------------------------------------------------------
def _safe(store: Store, project_id: str, rel: str) -> Path:
    if "\x00" in unquote(rel):
        raise APIError(400, 3, f"invalid path {rel!r}")
    root = store.project_dir(project_id).resolve()
    target = (root / unquote(rel).lstrip("/")).resolve()
    if target != root and root not in target.parents:
        raise APIError(400, 3, f"path {rel!r} leaves the project")
    return target


@op("UploadFile")
def upload_file(store: Store, project_id: str, form: dict[str, bytes]) -> None:
    store.project(project_id)
    if not form:
        raise APIError(400, 3, "multipart form with at least one file expected")
    for rel, content in form.items():
        target = _safe(store, project_id, rel)
        if target == store.project_dir(project_id).resolve():
            raise APIError(400, 3, f"upload path {rel!r} names no file")
        stem, suffix, n = target.stem, target.suffix, 1
        while target.exists():  # CML never overwrites: name(1).ext, name(2).ext, ...
            target = target.with_name(f"{stem}({n}){suffix}")
            n += 1
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        except OSError as exc:  # e.g. a parent that is a file, a name too long
            raise APIError(400, 3, f"cannot write {rel!r}: {exc.strerror}") from None


@op("ListProjectFiles")
def list_project_files(store: Store, project_id: str, path: str) -> dict:
    store.project(project_id)
    target = _safe(store, project_id, "" if unquote(path) in (".", "/") else path)
    if not target.is_dir():
        raise APIError(404, 5, f"directory {unquote(path)!r} not found")
    files = []
    for entry in sorted(target.iterdir()):  # names relative to the listed directory, like CML
        info: dict[str, Any] = {"path": entry.name, "is_dir": entry.is_dir()}
        if entry.is_file():
            info["file_size"] = str(entry.stat().st_size)
        files.append(info)
    return {"files": files}


@op("DownloadProjectFile")
def download_project_file(store: Store, project_id: str, path: str) -> bytes:
    store.project(project_id)
    target = _safe(store, project_id, path)
    if not target.is_file():
        raise APIError(404, 5, f"file {unquote(path)!r} not found")
    return target.read_bytes()


@op("ListRuntimes")
def list_runtimes(store: Store, query: dict, search_keys: list, sort_keys: list) -> dict:
    return listing(list(store.runtimes), "runtimes", query, search_keys, sort_keys)
