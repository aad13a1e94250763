"""``create_jobs`` (create or update by name, never duplicate) and ``trigger_jobs`` (run in order,
skip what already succeeded, stop the chain on the first failure).

CML starts a dependent job by itself when its parent's run succeeds. So a job whose parent ran in
this session is *awaited*, not triggered (triggering it too would run it twice); it is triggered
only if CML has not started it within a grace period.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from launchers.cai.client import CMLClient
from launchers.cai.errors import CAIError, CAITimeoutError
from launchers.cai.models import RUN_SUCCEEDED, Job, JobRun
from launchers.cai.pipeline.config import JobsConfig, JobSpec
from launchers.cai.runtimes import candidates, choose_runtime
from launchers.polling import PollTimeout, poll_until

Progress = Callable[[str], None]


def _desired(spec: JobSpec, parent_id: str, runtime: str) -> dict[str, object]:
    return {"script": spec.script, "cpu": spec.cpu, "memory": spec.memory, "nvidia_gpu": spec.nvidia_gpu,
            "timeout": spec.timeout, "parent_id": parent_id, "arguments": spec.arguments or "",
            "environment": spec.environment, "runtime_identifier": runtime, "kernel": spec.kernel}


class _Runtimes:
    """Each job's runtime: its own or the config's ``runtime_identifier`` (checked to exist), else
    one matching the config's ``runtime`` filter: a job already on a matching runtime keeps it, a new
    or non-matching one gets the newest. Looked up once per ``create_jobs``."""

    def __init__(self, client: CMLClient, config: JobsConfig) -> None:
        self.client, self.config = client, config
        self.checked: set[str] = set()
        self.matching: list[str] | None = None

    def for_job(self, spec: JobSpec, current: str) -> str:
        explicit = spec.runtime_identifier or self.config.runtime_identifier
        if explicit:
            if explicit not in self.checked:
                self.checked.add(choose_runtime(self.client, self.config.runtime, explicit))
            return explicit
        if self.matching is None:
            self.matching = [r.image_identifier for r in candidates(self.client, self.config.runtime)]
            if not self.matching:
                choose_runtime(self.client, self.config.runtime)  # raises, naming what the workspace has
        return current if current in self.matching else self.matching[0]


def _changes(job: Job, desired: dict[str, object]) -> dict[str, object]:
    changed = {}
    for key, want in desired.items():
        if want is None:
            continue  # not managed by the config: keep what CML has
        if getattr(job, key) != want:
            changed[key] = want
    return changed


def create_jobs(client: CMLClient, project_id: str, config: JobsConfig, *, progress: Progress) -> dict[str, str]:
    """Make the project's jobs match the config; returns ``{job_key: job_id}``."""
    existing: dict[str, Job] = {}
    for job in client.list_jobs(project_id):
        existing.setdefault(job.name, job)
    ids: dict[str, str] = {}
    runtimes = _Runtimes(client, config)
    for key in config.ordered():
        spec = config.jobs[key]
        parent_id = ids[spec.parent_job_key] if spec.parent_job_key else ""
        job = existing.get(spec.name)
        desired = _desired(spec, parent_id, runtimes.for_job(spec, job.runtime_identifier if job else ""))
        if job is None:
            fields = {k: v for k, v in desired.items() if k != "parent_id"}
            job = client.create_job(project_id, name=spec.name, parent_job_id=parent_id or None, **fields)
            progress(f"   created job {key!r} ({spec.name}): {job.id}")
        elif changes := _changes(job, desired):
            wire = dict(changes)
            if "timeout" in wire:
                wire["timeout"] = str(wire["timeout"])  # int64 in the Job message: a string
            if "environment" in wire:
                wire["environment"] = json.dumps(wire["environment"])  # a JSON string in Job
            job = client.update_job(project_id, job.id, **wire)
            progress(f"   updated job {key!r} ({spec.name}): {', '.join(sorted(changes))}")
        else:
            progress(f"   job {key!r} ({spec.name}) up to date: {job.id}")
        ids[key] = job.id
    return ids


@dataclass
class Waiting:
    poll_s: float = 5.0
    status_every_s: float = 10.0
    dependent_grace_s: float = 60.0
    default_timeout_s: float = 7200.0


def trigger_jobs(client: CMLClient, project_id: str, config: JobsConfig, *, force: bool = False,
                 progress: Progress, waiting: Waiting | None = None) -> dict[str, str]:
    """Run the chain; returns ``{job_key: final status or "SKIPPED"}``. Raises on the first failure."""
    waiting = waiting or Waiting()
    by_name = {j.name: j for j in client.list_jobs(project_id)}
    missing = [s.name for s in config.jobs.values() if s.name not in by_name]
    if missing:
        raise CAIError(f"jobs not found in project {project_id}: {', '.join(missing)}; run create-jobs first")
    jobs = {key: by_name[spec.name] for key, spec in config.jobs.items()}
    runs_before = {key: client.list_job_runs(project_id, job.id) for key, job in jobs.items()}
    results: dict[str, str] = {}
    ran: set[str] = set()
    for key in config.ordered():
        spec, job = config.jobs[key], jobs[key]
        if spec.parent_job_key in ran:
            known = {r.id for r in runs_before[key]}
            run = _await_dependent(client, project_id, job, known, waiting, progress)
        elif force or not runs_before[key] or runs_before[key][0].status != RUN_SUCCEEDED:
            reason = "FORCE_REBUILD" if force else (
                f"latest run {runs_before[key][0].status}" if runs_before[key] else "never ran")
            run = client.create_job_run(project_id, job.id)
            progress(f"Triggered {spec.name!r} ({reason}): run {run.id}")
        else:
            progress(f"Skipping {spec.name!r}: latest run {runs_before[key][0].id} succeeded")
            results[key] = "SKIPPED"
            continue
        run = _wait_run(client, project_id, job, run, spec, waiting, progress)
        results[key] = run.status
        if run.status != RUN_SUCCEEDED:
            raise CAIError(f"job {spec.name!r} failed: run {run.id} ended {run.status}; "
                           f"later jobs were not run (see the run's logs in CML)")
        ran.add(key)
    return results


def _await_dependent(client: CMLClient, project_id: str, job: Job, known: set[str], waiting: Waiting,
                     progress: Progress) -> JobRun:
    def started() -> JobRun | None:
        return next((r for r in client.list_job_runs(project_id, job.id) if r.id not in known), None)

    try:
        run = poll_until(started, waiting.dependent_grace_s, waiting.poll_s)
    except PollTimeout:
        pass
    else:
        progress(f"{job.name!r} started by CML after its parent: run {run.id}")
        return run
    progress(f"{job.name!r} was not started by CML within {waiting.dependent_grace_s:.0f}s; triggering it")
    return client.create_job_run(project_id, job.id)


def _wait_run(client: CMLClient, project_id: str, job: Job, run: JobRun, spec: JobSpec, waiting: Waiting,
              progress: Progress) -> JobRun:
    limit = spec.timeout + 300 if spec.timeout else waiting.default_timeout_s
    start, current, fresh = time.monotonic(), run, True

    def finished() -> JobRun | None:
        nonlocal current, fresh
        if not fresh:  # the run passed in was just read: look at it before asking again
            current = client.get_job_run(project_id, job.id, run.id)
        fresh = False
        return current if current.finished else None

    try:
        done = poll_until(finished, limit, waiting.poll_s, progress=progress, every_s=waiting.status_every_s,
                          status=lambda elapsed: f"   [{elapsed:.0f}s] {job.name}: {current.status}")
    except PollTimeout as exc:
        raise CAITimeoutError(f"job {job.name!r} run {run.id} still {current.status} after {exc.elapsed:.0f}s") from None
    progress(f"   [{time.monotonic() - start:.0f}s] {job.name}: {done.status}")
    return done
