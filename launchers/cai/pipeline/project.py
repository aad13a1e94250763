"""``setup_project``: find the CML project by exact name or create it from git; wait for the clone."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from launchers.cai.client import CMLClient
from launchers.cai.errors import CAIError, CAITimeoutError, CMLConflictError
from launchers.cai.models import Project
from launchers.polling import PollTimeout, poll_until

CLONE_DONE = "success"
CLONE_FAILED = frozenset({"failure", "failed", "error"})


def redact_url(url: str) -> str:
    """``https://token@github.com/x`` -> ``https://***@github.com/x`` (a PAT may ride in the URL)."""
    return re.sub(r"//[^/@]+@", "//***@", url)


def setup_project(client: CMLClient, name: str, git_url: str | None, *, progress: Callable[[str], None],
                  timeout_s: float = 900, poll_s: float = 2.0, status_every_s: float = 10.0,
                  output_file: str | Path | None = None) -> Project:
    """Find the project named exactly ``name`` among all the key can see (public and team projects
    included) or create it from git. Never creates a second project of a name that exists: a create
    that failed on the way back is found by name, and a name taken meanwhile is looked up again."""
    progress(f"Searching for project {name!r} on {client.host}")
    project = _only(client.find_projects(name), name)
    if project is not None:
        progress(f"Found existing project: {project.id}")
    else:
        if not git_url:
            raise CAIError(f"project {name!r} not found and no git URL given to create it")
        progress(f"Creating project {name!r} from {redact_url(git_url)}")
        try:
            project = client.create_project(name, git_url=git_url, description="Ray cluster (ray-serve-cai)")
        except CMLConflictError:
            project = _only(client.find_projects(name), name)
            if project is None:
                raise
            progress(f"Project {name!r} was created meanwhile: using {project.id}")
        else:
            progress(f"Created project: {project.id}")
    project = _wait_clone(client, project, progress, timeout_s, poll_s, status_every_s)
    _publish(project.id, output_file, progress)
    return project


def _only(found: list[Project], name: str) -> Project | None:
    if len(found) > 1:
        raise CAIError(f"{len(found)} projects visible to this key are named {name!r} "
                       f"({', '.join(p.id for p in found)}); rename or delete the extras")
    return found[0] if found else None


def _wait_clone(client: CMLClient, project: Project, progress: Callable[[str], None], timeout_s: float,
                poll_s: float, status_every_s: float) -> Project:
    start, current, fresh = time.monotonic(), project, True

    def cloned() -> Project | None:
        nonlocal current, fresh
        if not fresh:  # the project passed in was just read: look at it before asking again
            current = client.get_project(project.id)
        fresh = False
        status = current.creation_status or "unknown"
        if status in CLONE_FAILED:
            raise CAIError(f"project {current.name!r} ({current.id}) creation failed: status {status}")
        return current if status == CLONE_DONE else None

    try:
        done = poll_until(cloned, timeout_s, poll_s, progress=progress, every_s=status_every_s,
                          status=lambda elapsed: f"   [{elapsed:.0f}s] Status: {current.creation_status or 'unknown'}")
    except PollTimeout:
        raise CAITimeoutError(f"git clone of project {project.id} not done after {timeout_s:.0f}s "
                              f"(status {current.creation_status or 'unknown'})") from None
    progress(f"   [{time.monotonic() - start:.0f}s] Status: {done.creation_status}: git clone complete")
    return done


def _publish(project_id: str, output_file: str | Path | None, progress: Callable[[str], None]) -> None:
    if output_file:
        Path(output_file).write_text(project_id + "\n")
        progress(f"Project id written to {output_file}")
    if github_output := os.environ.get("GITHUB_OUTPUT"):
        with open(github_output, "a") as fh:
            fh.write(f"project_id={project_id}\n")
