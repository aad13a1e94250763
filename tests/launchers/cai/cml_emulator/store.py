"""State of the emulated workspace and its asynchronous state machines.

Objects are kept in their wire shape (what the real API returns: int64 as strings, environment as
a JSON string) so responses are produced, not translated. A ticker thread moves states the way
CML does: applications STARTING -> RUNNING (process up) -> STOPPED/FAILED (process exit); job runs
SCHEDULING -> RUNNING -> SUCCEEDED/FAILED/TIMEDOUT, and a succeeded run starts the runs of the
jobs whose parent it is. Projects created from git really ``git clone`` (local URLs in tests).
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .workloads import Workload

FINAL_RUN = {"ENGINE_SUCCEEDED", "ENGINE_FAILED", "ENGINE_TIMEDOUT", "ENGINE_STOPPED", "ENGINE_SKIPPED"}
USER = {"username": "emulator", "name": "CML Emulator", "email": "emulator@example.invalid"}
_REPO = "docker.repository.cloudera.com/cloudera/cdsw"


def _runtime(editor: str, python: str, edition: str, version: str, status: str = "ENABLED") -> dict[str, Any]:
    slug = {"PBJ Workbench": "pbj-workbench", "JupyterLab": "jupyterlab", "Workbench": "workbench"}[editor]
    kind = "standard" if edition == "Standard" else "cuda"
    return {"image_identifier": f"{_REPO}/ml-runtime-{slug}-python{python}-{kind}:{version}", "editor": editor,
            "kernel": f"Python {python}", "edition": edition, "description": f"{editor} Python {python} {edition}",
            "full_version": version, "status": status, "register_user_id": 0}


def default_runtimes() -> list[dict[str, Any]]:
    """A workspace's catalogue as ``GET /api/v2/runtimes`` shows it (shapes of real identifiers)."""
    return [
        _runtime("PBJ Workbench", "3.11", "Standard", "2025.01.3-b8"),
        _runtime("PBJ Workbench", "3.11", "Standard", "2024.10.1-b12"),
        _runtime("PBJ Workbench", "3.11", "Standard", "2023.08.2-b8", status="DEPRECATED"),
        _runtime("PBJ Workbench", "3.11", "Nvidia GPU", "2025.01.3-b8"),
        _runtime("PBJ Workbench", "3.10", "Standard", "2025.01.3-b8"),
        _runtime("JupyterLab", "3.11", "Standard", "2025.01.3-b8"),
        _runtime("Workbench", "3.9", "Standard", "2022.11.2-b2", status="DISABLED"),
    ]


class APIError(Exception):
    """An error response: grpc ``code`` and HTTP ``status`` as grpc-gateway maps them."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id() -> str:
    return "-".join(secrets.token_hex(2) for _ in range(4))


@dataclass
class Timing:
    """Delays of the state machines (seconds); tests shorten or lengthen them."""

    app_start: float = 0.3
    run_schedule: float = 0.3
    clone: float = 0.3
    stop_grace: float = 5.0


@dataclass
class Record:
    wire: dict[str, Any]
    project_id: str = ""
    workload: Workload | None = None
    due: float = 0.0  # when the next automatic transition happens
    env: dict[str, str] = field(default_factory=dict)
    stopping: bool = False


class Store:
    def __init__(self, root: Path, base_url: str, api_key: str, timing: Timing) -> None:
        self.root, self.base_url, self.api_key, self.timing = root, base_url, api_key, timing
        self.lock = threading.RLock()
        self.projects: dict[str, Record] = {}
        self.jobs: dict[str, Record] = {}
        self.runs: dict[str, Record] = {}
        self.apps: dict[str, Record] = {}
        self.runtimes: list[dict[str, Any]] = default_runtimes()
        self.finished_workloads: list[Workload] = []
        self._ips = itertools.cycle(range(2, 255))
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="cml-emulator-ticker", daemon=True)
        self._ticker.start()

    # -- helpers ----------------------------------------------------------------------------------
    def project_dir(self, project_id: str) -> Path:
        return self.root / "projects" / project_id

    def runtime(self, identifier: str) -> dict[str, Any] | None:
        """The usable (not disabled) runtime of that identifier."""
        return next((r for r in self.runtimes if r["image_identifier"] == identifier and r["status"] != "DISABLED"),
                    None)

    def project(self, project_id: str) -> Record:
        if project_id not in self.projects:
            raise APIError(404, 5, f"project {project_id} not found")
        return self.projects[project_id]

    def _env(self, project_id: str, workload_id: str, extra: dict[str, str]) -> dict[str, str]:
        project_env = json.loads(self.projects[project_id].wire.get("environment") or "{}")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CDSW_", "CML_"))}
        return {
            **base, **project_env, **extra,
            "HOME": str(self.project_dir(project_id)),
            "CDSW_PROJECT_ID": project_id,
            "CDSW_ENGINE_ID": workload_id,
            "CDSW_IP_ADDRESS": f"127.0.0.{next(self._ips)}",  # each "pod" has its own address
            "CDSW_API_URL": f"{self.base_url}/api/v1",
            "CDSW_APIV2_KEY": self.api_key,
            "CDSW_DOMAIN": self.base_url.split("://", 1)[1],
        }

    def _spawn(self, rec: Record, script: str, extra_env: dict[str, str]) -> Workload:
        workload_id = rec.wire["id"]
        env = self._env(rec.project_id, workload_id, extra_env)
        return Workload(workload_id, self.project_dir(rec.project_id), script, env,
                        self.root / "logs" / f"{workload_id}.log")

    # -- projects ---------------------------------------------------------------------------------
    def create_project(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name") or ""
        if not name:
            raise APIError(400, 3, "project name is required")
        if any(p.wire["name"] == name and p.wire["owner"]["username"] == USER["username"]
               for p in self.projects.values()):  # names are unique per owner, not per workspace
            raise APIError(409, 6, f"project {name!r} already exists")
        pid = new_id()
        wire = {"id": pid, "name": name, "owner": USER, "creator": USER, "description": body.get("description", ""),
                "visibility": body.get("visibility", "private"), "default_engine_type": "ml_runtime",
                "created_at": now(), "updated_at": now(), "creation_status": "creating",
                "environment": json.dumps(body.get("environment") or {}), "slug": f"emulator/{name}"}
        rec = Record(wire, project_id=pid, due=time.monotonic() + self.timing.clone)
        rec.env["git_url"] = body.get("git_url", "") if body.get("template") == "git" else ""
        self.project_dir(pid).mkdir(parents=True)
        self.projects[pid] = rec
        return wire

    def _finish_clone(self, rec: Record) -> None:
        url = rec.env.get("git_url")
        status = "success"
        if url:
            # Never prompt, never hang: a test's URL is local, anything else fails fast.
            env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}
            try:
                done = subprocess.run(["git", "clone", "-q", "--", url, str(self.project_dir(rec.project_id))],
                                      capture_output=True, text=True, env=env, timeout=60)
                status = "success" if done.returncode == 0 else "failure"
            except subprocess.TimeoutExpired:
                status = "failure"
        rec.wire["creation_status"] = status

    # -- jobs and runs ----------------------------------------------------------------------------
    def create_run(self, project_id: str, job_id: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None or job.project_id != project_id:
            raise APIError(404, 5, f"job {job_id} not found")
        j = job.wire
        wire = {"project_id": project_id, "job_id": job_id, "status": "ENGINE_SCHEDULING", "id": new_id(),
                "created_at": now(), "scheduling_at": now(), "kernel": j.get("kernel", "python3"),
                "cpu": j["cpu"], "memory": j["memory"], "nvidia_gpu": j.get("nvidia_gpu", 0),
                "arguments": j.get("arguments", ""), "creator": USER,
                "environment": json.dumps(env or {}), "runtime_identifier": j.get("runtime_identifier", "")}
        self.runs[wire["id"]] = Record(wire, project_id=project_id, due=time.monotonic() + self.timing.run_schedule,
                                       env={**json.loads(j.get("environment") or "{}"), **(env or {})})
        return wire

    def _advance_run(self, rec: Record) -> None:
        w = rec.wire
        if w["status"] == "ENGINE_SCHEDULING" and time.monotonic() >= rec.due:
            job = self.jobs[w["job_id"]].wire
            try:
                rec.workload = self._spawn(rec, job["script"], rec.env)
            except FileNotFoundError:
                w["status"], w["finished_at"] = "ENGINE_FAILED", now()
                return
            w["status"], w["starting_at"], w["running_at"] = "ENGINE_RUNNING", now(), now()
            timeout = int(job.get("timeout") or 0)
            rec.due = time.monotonic() + timeout if timeout else float("inf")
        elif w["status"] == "ENGINE_RUNNING" and rec.workload is not None:
            code = rec.workload.poll()
            if code is None and time.monotonic() < rec.due:
                return
            if code is None:
                rec.workload.kill(self.timing.stop_grace)
                w["status"] = "ENGINE_TIMEDOUT"
            else:
                w["status"] = "ENGINE_SUCCEEDED" if code == 0 else "ENGINE_FAILED"
            w["finished_at"] = now()
            self.finished_workloads.append(rec.workload)
            if w["status"] == "ENGINE_SUCCEEDED":  # CML's job dependencies: children run next
                for child in [j for j in self.jobs.values() if j.wire.get("parent_id") == w["job_id"]]:
                    self.create_run(child.project_id, child.wire["id"])

    # -- applications -----------------------------------------------------------------------------
    def _advance_app(self, rec: Record) -> None:
        w = rec.wire
        if w["status"] == "APPLICATION_STARTING" and time.monotonic() >= rec.due:
            try:
                rec.workload = self._spawn(rec, w["script"], json.loads(w["environment"] or "{}"))
            except FileNotFoundError:
                w["status"] = "APPLICATION_FAILED"
                return
            w["status"], w["running_at"] = "APPLICATION_RUNNING", now()
        elif w["status"] == "APPLICATION_RUNNING" and rec.workload is not None:
            rec.workload.sample()
            code = rec.workload.poll()
            if code is not None:
                w["status"] = "APPLICATION_STOPPED" if code == 0 else "APPLICATION_FAILED"
                w["stopped_at"] = now()
                self.finished_workloads.append(rec.workload)

    def stop_app(self, rec: Record, then: str = "APPLICATION_STOPPED") -> None:
        """Asynchronous like CML: STOPPING now, the process tree dies in the background."""
        rec.wire["status"] = "APPLICATION_STOPPING"
        workload, rec.workload = rec.workload, None

        def finish() -> None:
            if workload is not None:
                workload.kill(self.timing.stop_grace)
                self.finished_workloads.append(workload)
            with self.lock:
                rec.wire["stopped_at"] = now()
                rec.wire["status"] = then
                if then == "APPLICATION_STARTING":
                    rec.due = time.monotonic() + self.timing.app_start

        threading.Thread(target=finish, daemon=True).start()

    # -- ticking ----------------------------------------------------------------------------------
    def _tick_loop(self) -> None:
        while not self._stop.wait(0.1):
            with self.lock:
                clones = [r for r in self.projects.values()
                          if r.wire["creation_status"] == "creating" and time.monotonic() >= r.due]
                for rec in clones:
                    rec.due = float("inf")  # picked: cloned once, outside the lock
                for rec in list(self.runs.values()):
                    if rec.wire["status"] not in FINAL_RUN:
                        self._advance_run(rec)
                for rec in list(self.apps.values()):
                    self._advance_app(rec)
            for rec in clones:  # git outside the lock: requests keep being answered meanwhile
                self._finish_clone(rec)

    def workloads(self) -> list[Workload]:
        with self.lock:
            live = [r.workload for r in [*self.apps.values(), *self.runs.values()] if r.workload]
        return live + self.finished_workloads

    def shutdown(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=5)
        for workload in self.workloads():
            if workload.poll() is None:
                workload.kill(grace_s=2.0)
