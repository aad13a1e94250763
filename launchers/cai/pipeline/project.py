"""``setup_project``: find the CML project by exact name or create it from git; wait for the clone."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from launchers.cai.client import CMLClient
from launchers.cai.errors import CAIError, CAITimeoutError
from launchers.cai.models import Project

CLONE_DONE = "success"
CLONE_FAILED = frozenset({"failure", "failed", "error"})


def redact_url(url: str) -> str:
    """``https://token@github.com/x`` -> ``https://***@github.com/x`` (a PAT may ride in the URL)."""
    return re.sub(r"//[^/@]+@", "//***@", url)


def setup_project(client: CMLClient, name: str, git_url: str | None, *, progress: Callable[[str], None],
                  timeout_s: float = 900, poll_s: float = 2.0, status_every_s: float = 10.0,
                  output_file: str | Path | None = None) -> Project:
    progress(f"Searching for project {name!r} on {client.host}")
    found = client.find_projects(name)
    if len(found) > 1:
        raise CAIError(f"{len(found)} projects are named {name!r}; rename or delete the extras")
    if found:
        project = found[0]
        progress(f"Found existing project: {project.id}")
    else:
        if not git_url:
            raise CAIError(f"project {name!r} not found and no git URL given to create it")
        progress(f"Creating project {name!r} from {redact_url(git_url)}")
        project = client.create_project(name, git_url=git_url, description="Ray cluster (ray-serve-cai)")
        progress(f"Created project: {project.id}")
    project = _wait_clone(client, project, progress, timeout_s, poll_s, status_every_s)
    _publish(project.id, output_file, progress)
    return project


def _wait_clone(client: CMLClient, project: Project, progress: Callable[[str], None], timeout_s: float,
                poll_s: float, status_every_s: float) -> Project:
    start = time.monotonic()
    last = -status_every_s
    while True:
        status = project.creation_status or "unknown"
        elapsed = time.monotonic() - start
        if status == CLONE_DONE:
            progress(f"   [{elapsed:.0f}s] Status: {status}: git clone complete")
            return project
        if status in CLONE_FAILED:
            raise CAIError(f"project {project.name!r} ({project.id}) creation failed: status {status}")
        if elapsed - last >= status_every_s:  # a line every 10 s so CI never looks hung
            progress(f"   [{elapsed:.0f}s] Status: {status}")
            last = elapsed
        if elapsed > timeout_s:
            raise CAITimeoutError(f"git clone of project {project.id} not done after {timeout_s:.0f}s "
                                  f"(status {status})")
        time.sleep(poll_s)
        project = client.get_project(project.id)


def _publish(project_id: str, output_file: str | Path | None, progress: Callable[[str], None]) -> None:
    if output_file:
        Path(output_file).write_text(project_id + "\n")
        progress(f"Project id written to {output_file}")
    if github_output := os.environ.get("GITHUB_OUTPUT"):
        with open(github_output, "a") as fh:
            fh.write(f"project_id={project_id}\n")
