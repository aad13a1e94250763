"""Configuration of a Ray cluster on CML applications, validated at load.

The API key is a ``SecretStr``: it comes from ``cai.api_key`` or, better, the environment
(``CML_API_KEY``, or ``CDSW_APIV2_KEY`` which CML sets inside its own workloads) and never shows
in a repr, a log line or an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from launchers.cai.errors import CAIError
from launchers.cai.http import normalize_host
from launchers.cai.runtimes import RuntimeFilter
from serve_apps.validation import StrictModel, format_validation_error

NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")  # CML's subdomain rule; names derive subdomains


class NodeResources(StrictModel):
    cpu: float = Field(16, gt=0, description="vCPUs of the application")
    memory: float = Field(64, gt=0, description="memory of the application in GiB")
    num_gpus: int = Field(0, ge=0, description="GPUs (workers only: the head always gets 0)")


class HeadResources(StrictModel):
    cpu: float | None = Field(None, gt=0)
    memory: float | None = Field(None, gt=0)


class CAISection(StrictModel):
    host: str
    api_key: SecretStr | None = None
    project_id: str
    cluster_name: str = "ray-cluster"
    num_workers: int = Field(1, ge=0)
    resources: NodeResources = Field(default_factory=NodeResources)
    head_resources: HeadResources = Field(default_factory=HeadResources)
    runtime: RuntimeFilter = Field(default_factory=RuntimeFilter, description="how the runtime is looked up")
    runtime_identifier: str | None = Field(None, description="use this runtime instead of looking one up")
    kernel: str | None = Field(None, description="legacy engines only: leave unset on ML Runtimes")
    start_timeout_s: float = Field(900, gt=0)
    poll_interval_s: float = Field(5, gt=0)
    request_timeout_s: float = Field(30, gt=0)

    @field_validator("host")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            return normalize_host(value)
        except CAIError as exc:
            raise ValueError(f"{exc} (like https://ml.example.cloudera.site)") from None

    @field_validator("cluster_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value) or len(value) > 40:
            raise ValueError("lowercase letters, digits and single dashes, at most 40 characters")
        return value


class RaySection(StrictModel):
    port: int = Field(6379, ge=1024, le=65535)
    dashboard_port: int = Field(8265, ge=1024, le=65535)
    include_dashboard: bool = True
    object_store_memory_mb: int | None = Field(None, gt=0)
    # "free": every node picks free node-local ports; needed when several nodes share a host
    # (the emulator in tests), harmless on CML where each application is its own pod.
    local_ports: Literal["default", "free"] = "default"
    temp_dir: str | None = None
    num_cpus: int | None = Field(None, gt=0, description="CPUs Ray advertises per worker (default: the app's)")
    head_num_cpus: int | None = Field(0, ge=0, description="CPUs the head advertises; 0 keeps tasks and "
                                      "replicas off the coordinator (None: like a worker)")


class ServeSection(StrictModel):
    config: str | None = Field(None, description="serve config (serve build output) to `serve deploy` after start")


class ClusterConfig(StrictModel):
    cai: CAISection
    ray: RaySection = Field(default_factory=RaySection)
    serve: ServeSection = Field(default_factory=ServeSection)

    @model_validator(mode="after")
    def _ports_differ(self) -> ClusterConfig:
        if self.ray.port == self.ray.dashboard_port:
            raise ValueError("ray.port and ray.dashboard_port must differ")
        return self

    @property
    def head_cpu(self) -> float:
        return self.cai.head_resources.cpu or self.cai.resources.cpu

    @property
    def head_memory(self) -> float:
        return self.cai.head_resources.memory or self.cai.resources.memory

    def api_key(self) -> str:
        if self.cai.api_key is None:
            raise CAIError(f"no CML API key for {self.cai.host}: set CML_API_KEY or cai.api_key")
        return self.cai.api_key.get_secret_value()


ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "RAY_NUM_WORKERS": ("cai", "num_workers"),
    "RAY_WORKER_GPUS": ("cai", "resources", "num_gpus"),
    "RUNTIME_IDENTIFIER": ("cai", "runtime_identifier"),
    "CML_HOST": ("cai", "host"),
    "CML_PROJECT_ID": ("cai", "project_id"),
}


def apply_env(raw: dict, env: Mapping[str, str]) -> dict:
    """Environment beats the file for the ``ENV_OVERRIDES`` variables; secrets fill only gaps."""
    for var, keys in ENV_OVERRIDES.items():
        if env.get(var):
            node = raw
            for key in keys[:-1]:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    break  # a malformed section: validation will name it
            else:
                node[keys[-1]] = env[var]
    cai = raw.setdefault("cai", {})
    if isinstance(cai, dict):
        if not cai.get("api_key"):
            key = env.get("CML_API_KEY") or env.get("CDSW_APIV2_KEY")
            if key:
                cai["api_key"] = key
        if not cai.get("project_id") and env.get("CDSW_PROJECT_ID"):
            cai["project_id"] = env["CDSW_PROJECT_ID"]
        if not cai.get("host") and env.get("CDSW_API_URL"):  # inside CML: https://host/api/v1
            cai["host"] = env["CDSW_API_URL"].split("/api/")[0]
    return raw


def read_yaml(path: str | Path, what: str) -> object:
    """The YAML document at ``path`` (``{}`` if empty); a ``CAIError`` naming ``what`` and the cause."""
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise CAIError(f"cannot read {what} {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CAIError(f"{what} {path} is not valid YAML: {' '.join(str(exc).split())}") from None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> ClusterConfig:
    """Read YAML, apply env overrides, validate; errors name the bad key (``cai.num_workers``)."""
    env = os.environ if env is None else env
    raw = read_yaml(path, "config") if path is not None else {}
    if not isinstance(raw, dict):
        raise CAIError(f"config {path}: top level must be a mapping with a 'cai' section")
    try:
        return ClusterConfig.model_validate(apply_env(raw, env))
    except ValidationError as exc:
        raise CAIError(f"config {path or '(environment)'}: {format_validation_error(exc)}") from None

