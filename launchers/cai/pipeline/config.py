"""``jobs_config.yaml``: the CML jobs and their parent chain, validated at load."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from launchers.cai.errors import CAIError
from launchers.cai.runtimes import RuntimeFilter
from serve_apps.validation import StrictModel, format_validation_error

DEFAULT_JOBS_CONFIG = Path(__file__).resolve().parents[1] / "jobs_config.yaml"


class JobSpec(StrictModel):
    name: str = Field(min_length=1)
    script: str = Field(min_length=1, description="path relative to the project root")
    cpu: float = Field(4, gt=0)
    memory: float = Field(16, gt=0, description="GiB")
    nvidia_gpu: int = Field(0, ge=0)
    timeout: int = Field(600, ge=0, description="seconds; 0 = none")
    parent_job_key: str | None = None
    arguments: str | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    runtime_identifier: str | None = Field(None, description="this job's runtime (default: the config's)")
    kernel: str | None = Field(None, description="legacy engines only: leave unset on ML Runtimes")


class JobsConfig(StrictModel):
    jobs: dict[str, JobSpec]
    runtime: RuntimeFilter = Field(default_factory=RuntimeFilter, description="how the jobs' runtime is looked up")
    runtime_identifier: str | None = Field(None, description="use this runtime instead of looking one up")

    @model_validator(mode="after")
    def _chain(self) -> JobsConfig:
        if not self.jobs:
            raise ValueError("jobs: at least one job is required")
        names = [j.name for j in self.jobs.values()]
        if len(set(names)) != len(names):
            raise ValueError("jobs: job names must be unique (jobs are found by name)")
        for key, job in self.jobs.items():
            if job.parent_job_key is not None and job.parent_job_key not in self.jobs:
                raise ValueError(f"jobs.{key}.parent_job_key: unknown job {job.parent_job_key!r}")
        self.ordered()  # raises on a cycle
        return self

    def ordered(self) -> list[str]:
        """Job keys parents-first (the order runs happen in)."""
        done: list[str] = []
        pending = dict(self.jobs)
        while pending:
            ready = [k for k, j in pending.items() if j.parent_job_key is None or j.parent_job_key in done]
            if not ready:
                raise ValueError(f"jobs: parent_job_key cycle among {sorted(pending)}")
            for key in ready:
                done.append(key)
                del pending[key]
        return done

    def children(self, key: str) -> list[str]:
        return [k for k, j in self.jobs.items() if j.parent_job_key == key]


def load_jobs_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> JobsConfig:
    """Read and validate; ``RUNTIME_IDENTIFIER`` in ``env`` (default: the environment) overrides the file."""
    env = os.environ if env is None else env
    path = Path(path) if path else DEFAULT_JOBS_CONFIG
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CAIError(f"cannot read jobs config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CAIError(f"jobs config {path} is not valid YAML: {exc}") from None
    if isinstance(raw, dict) and env.get("RUNTIME_IDENTIFIER"):
        raw["runtime_identifier"] = env["RUNTIME_IDENTIFIER"]
    try:
        return JobsConfig.model_validate(raw)
    except ValidationError as exc:
        raise CAIError(f"jobs config {path}: {format_validation_error(exc)}") from None
