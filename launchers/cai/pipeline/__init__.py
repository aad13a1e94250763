"""The CML jobs pipeline: project -> jobs -> ordered runs, all idempotent."""

from launchers.cai.pipeline.config import JobsConfig, JobSpec, load_jobs_config
from launchers.cai.pipeline.deploy import deploy_to_cml
from launchers.cai.pipeline.jobs import create_jobs, trigger_jobs
from launchers.cai.pipeline.project import setup_project

__all__ = ["JobSpec", "JobsConfig", "create_jobs", "deploy_to_cml", "load_jobs_config", "setup_project", "trigger_jobs"]
