"""A typed client for the subset of the CML API v2 that the launchers use.

Every list call pages through ``next_page_token`` (the server's default page is 10), and every
``search_filter`` result is filtered again exactly here, because the server matches substrings.
Every create is done at most once: after a failure the server may have acted on (a 5xx, a reset, a
timeout), the HTTP layer calls the create's lookup (jobs and projects by name, applications by name
and environment, runs by a nonce in their environment, uploads by path and content) and resends only
if it did not happen.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from launchers.cai.errors import CAIError, CMLAPIError, CMLConflictError, CMLNotFoundError
from launchers.cai.http import CMLHTTP, RetryPolicy
from launchers.cai.models import Application, FileInfo, Job, JobRun, Project, Runtime

M = TypeVar("M")
API = "/api/v2"
RUN_NONCE = "RAY_SERVE_CAI_RUN_NONCE"  # in a run's environment: finds a run whose create response was lost


class CMLClient:
    """One CML workspace. ``CMLClient(host, api_key)``; use as a context manager to close it."""

    def __init__(self, host: str, api_key: str, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, page_size: int | None = None) -> None:
        self.http = CMLHTTP(host, api_key, timeout=timeout, retry=retry)
        self.host = self.http.host
        self.page_size = page_size

    def __repr__(self) -> str:
        return f"CMLClient(host={self.host!r})"

    def __enter__(self) -> CMLClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- paging -----------------------------------------------------------------------------------
    def _pages(self, path: str, key: str, model: type[M], search: Mapping[str, str] | None = None,
               **params: Any) -> Iterator[M]:
        params["page_size"] = self.page_size
        if search:
            params["search_filter"] = json.dumps(dict(search))
        token, seen = None, set()
        while True:
            body = self.http.request("GET", path, params={**params, "page_token": token})
            for item in body.get(key) or []:
                yield model.model_validate(item)  # type: ignore[attr-defined]
            token = body.get("next_page_token")
            if not token:
                return
            if token in seen:
                raise CMLAPIError(f"CML API GET {path} on {self.host} returned page token {str(token)[:40]!r} "
                                  "a second time; stopped paging instead of looping", method="GET", path=path)
            seen.add(token)

    # -- projects ---------------------------------------------------------------------------------
    def find_projects(self, name: str) -> list[Project]:
        """Projects named exactly ``name`` that the key can see: its own, its teams', other users'
        public ones (``include_public_projects``; the server's name filter is a substring match)."""
        found = self._pages(f"{API}/projects", "projects", Project, {"name": name}, include_public_projects="true")
        return [p for p in found if p.name == name]

    def create_project(self, name: str, *, git_url: str | None = None, template: str | None = None,
                       description: str = "", environment: Mapping[str, str] | None = None) -> Project:
        body: dict[str, Any] = {"name": name, "description": description}
        if git_url:
            body |= {"template": "git", "git_url": git_url}
        elif template:
            body["template"] = template
        if environment:
            body["environment"] = dict(environment)

        def applied() -> Project | None:
            found = self.find_projects(name)
            return found[0] if len(found) == 1 else None

        return Project.model_validate(self.http.request("POST", f"{API}/projects", json=body, reconcile=applied))

    def get_project(self, project_id: str) -> Project:
        return Project.model_validate(self.http.request("GET", f"{API}/projects/{project_id}"))

    # -- jobs -------------------------------------------------------------------------------------
    def list_jobs(self, project_id: str, name: str | None = None) -> list[Job]:
        jobs = self._pages(f"{API}/projects/{project_id}/jobs", "jobs", Job, {"name": name} if name else None)
        return [j for j in jobs if name is None or j.name == name]

    def create_job(self, project_id: str, **fields: Any) -> Job:
        """Create a job. Jobs are identified by name: after an ambiguous failure a job of this name
        and script is taken as this create (create only names that do not exist yet)."""
        body = {"project_id": project_id, **_clean(fields)}

        def applied() -> Job | None:
            found = self.list_jobs(project_id, name=body.get("name"))
            return next((j for j in found if j.script == body.get("script", j.script)), None)

        path = f"{API}/projects/{project_id}/jobs"
        return Job.model_validate(self.http.request("POST", path, json=body, reconcile=applied))

    def update_job(self, project_id: str, job_id: str, **fields: Any) -> Job:
        """PATCH a job (sets fields: safe to resend). The update body is a ``Job``: its parent is ``parent_id``."""
        path = f"{API}/projects/{project_id}/jobs/{job_id}"
        return Job.model_validate(self.http.request("PATCH", path, json=_clean(fields), idempotent=True))

    def create_job_run(self, project_id: str, job_id: str, environment: Mapping[str, str] | None = None) -> JobRun:
        """Start a run. Its environment carries a nonce, so a run whose response was lost is found."""
        nonce = uuid.uuid4().hex
        body: dict[str, Any] = {"project_id": project_id, "job_id": job_id,
                                "environment": {**(environment or {}), RUN_NONCE: nonce}}
        path = f"{API}/projects/{project_id}/jobs/{job_id}/runs"

        def applied() -> JobRun | None:
            runs = self._pages(path, "job_runs", JobRun, sort="-created_at")
            return next((r for r in runs if r.environment.get(RUN_NONCE) == nonce), None)

        return JobRun.model_validate(self.http.request("POST", path, json=body, reconcile=applied))

    def list_job_runs(self, project_id: str, job_id: str) -> list[JobRun]:
        """All runs of a job, newest first."""
        path = f"{API}/projects/{project_id}/jobs/{job_id}/runs"
        runs = list(self._pages(path, "job_runs", JobRun, sort="-created_at"))
        return sorted(runs, key=lambda r: r.created_at, reverse=True)

    def get_job_run(self, project_id: str, job_id: str, run_id: str) -> JobRun:
        path = f"{API}/projects/{project_id}/jobs/{job_id}/runs/{run_id}"
        return JobRun.model_validate(self.http.request("GET", path))

    # -- applications -----------------------------------------------------------------------------
    def list_applications(self, project_id: str, name: str | None = None) -> list[Application]:
        search = {"name": name} if name else None
        apps = self._pages(f"{API}/projects/{project_id}/applications", "applications", Application, search)
        return [a for a in apps if name is None or a.name == name]

    def create_application(self, project_id: str, **fields: Any) -> Application:
        """Create an application. After an ambiguous failure (or a 409 for its subdomain), one of this
        name whose environment holds everything sent (give it a nonce) is taken as this create."""
        body = {"project_id": project_id, **_clean(fields)}
        sent_env = {str(k): str(v) for k, v in (body.get("environment") or {}).items()}

        def applied() -> Application | None:
            found = self.list_applications(project_id, name=body.get("name"))
            return next((a for a in found if sent_env.items() <= a.environment.items()), None)

        path = f"{API}/projects/{project_id}/applications"
        try:
            return Application.model_validate(self.http.request("POST", path, json=body, reconcile=applied))
        except CMLConflictError:  # the subdomain is taken: by this very create, landed late?
            if (found := applied()) is not None:
                return found
            raise

    def get_application(self, project_id: str, app_id: str) -> Application:
        path = f"{API}/projects/{project_id}/applications/{app_id}"
        return Application.model_validate(self.http.request("GET", path))

    def stop_application(self, project_id: str, app_id: str) -> Application:
        """Stop (safe to resend: stopping a stopped application changes nothing)."""
        path = f"{API}/projects/{project_id}/applications/{app_id}:stop"
        return Application.model_validate(self.http.request("POST", path, idempotent=True))

    def restart_application(self, project_id: str, app_id: str) -> Application:
        path = f"{API}/projects/{project_id}/applications/{app_id}:restart"
        return Application.model_validate(self.http.request("POST", path))

    def delete_application(self, project_id: str, app_id: str) -> None:
        self.http.request("DELETE", f"{API}/projects/{project_id}/applications/{app_id}")

    # -- files ------------------------------------------------------------------------------------
    def upload_file(self, project_id: str, path: str, content: bytes) -> None:
        """Upload to ``path`` (relative to /home/cdsw). CML never overwrites: an existing name
        becomes ``name(1).ext``, so callers upload to content-addressed paths."""
        files = {path: (path.rsplit("/", 1)[-1], content, "application/octet-stream")}

        def applied() -> dict | None:  # the file is there with this content: the upload happened
            try:
                landed = self.file_exists(project_id, path) and self.download_file(project_id, path) == content
            except CMLNotFoundError:
                return None
            return {} if landed else None

        self.http.request("POST", f"{API}/projects/{project_id}/files", files=files, reconcile=applied)

    def list_files(self, project_id: str, path: str) -> list[FileInfo]:
        """One directory (not paged by the API); ``""`` or ``"."`` is the project root."""
        body = self.http.request("GET", f"{API}/projects/{project_id}/files/{_file_segment(path)}")
        return [FileInfo.model_validate(f) for f in body.get("files") or []]

    def file_exists(self, project_id: str, path: str) -> bool:
        """Whether ``path`` is a file. Lists from the root down, only directories seen to exist: the
        spec promises no status for a missing directory (only a ``default`` error), so every error,
        a missing project included, is raised rather than read as "absent"."""
        parts = _file_parts(path)
        directory = ""
        for depth, name in enumerate(parts):
            entries = {_basename(f.path): f for f in self.list_files(project_id, directory)}
            entry = entries.get(name)
            if entry is None or entry.is_dir == (depth == len(parts) - 1):
                return False
            directory = f"{directory}/{name}".lstrip("/")
        return bool(parts)

    def download_file(self, project_id: str, path: str) -> bytes:
        """Read a file (a POST that changes nothing: retried like a GET)."""
        path = f"{API}/projects/{project_id}/files/{_file_segment(path)}:download"
        return self.http.request("POST", path, raw=True, idempotent=True)

    # -- runtimes ---------------------------------------------------------------------------------
    def list_runtimes(self, **search: str) -> list[Runtime]:
        runtimes = self._pages(f"{API}/runtimes", "runtimes", Runtime, search or None)
        return [r for r in runtimes if all(getattr(r, k, None) == v for k, v in search.items())]


def _file_parts(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CAIError(f"project file path may not contain '..': {path!r}")
    return parts


def _file_segment(path: str) -> str:
    """``path`` as the one URL segment of ``{path}``. The root is "/" (sent as %2F): a bare "." or an
    empty segment is removed by URL normalisation, leaving ``.../files``, which the API does not define."""
    return quote("/".join(_file_parts(path)) or "/", safe="")


def _basename(path: str) -> str:
    """Listings name entries relative to the listed directory; tolerate full paths too."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def _clean(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Drop unset fields: the API treats a present empty value as "set to empty"."""
    return {k: v for k, v in fields.items() if v is not None}
