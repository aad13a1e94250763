"""``deploy_to_cml``: the whole pipeline in one call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from launchers.cai.client import CMLClient
from launchers.cai.models import Project
from launchers.cai.pipeline.config import JobsConfig
from launchers.cai.pipeline.jobs import Waiting, create_jobs, trigger_jobs
from launchers.cai.pipeline.project import setup_project


def deploy_to_cml(client: CMLClient, name: str, git_url: str | None, config: JobsConfig, *,
                  progress: Callable[[str], None], force: bool = False, waiting: Waiting | None = None,
                  clone_timeout_s: float = 900, output_file: str | Path | None = None) -> tuple[Project, dict[str, str]]:
    """setup_project -> create_jobs -> trigger_jobs; returns the project and each job's final status."""
    waiting = waiting or Waiting()
    project = setup_project(client, name, git_url, progress=progress, timeout_s=clone_timeout_s,
                            poll_s=waiting.poll_s, status_every_s=waiting.status_every_s, output_file=output_file)
    create_jobs(client, project.id, config, progress=progress)
    results = trigger_jobs(client, project.id, config, force=force, progress=progress, waiting=waiting)
    return project, results
