"""Where the manifests live and what each environment is: ``k8s/environments.yaml``, validated at load.

An environment is an overlay directory (``k8s/overlays/<overlay>``, by default its name) plus the
serve-config profile its ``serveConfigV2`` is generated from, where its batch files live and how long
``apply`` waits for it. Environments of a named cluster are called ``<cluster>-<env>`` (``kcl1-dev``):
``--cluster kcl1 --env dev`` picks that one, ``--env dev`` alone the GPU cluster's ``dev``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, Field, RootModel, ValidationError, field_validator

from launchers.kuberay.errors import KubeRayError
from serve_apps.validation import StrictModel, format_validation_error

# The repository's k8s/ (the package is installed from a checkout; `--k8s-dir` points elsewhere).
DEFAULT_K8S_DIR = Path(__file__).resolve().parents[2] / "k8s"


def _batch_storage(value: str) -> str:
    if "://" in value:
        return value
    if not value.startswith("/"):
        raise ValueError(f"{value!r}: an absolute path that every Ray pod mounts (a shared volume), or a URI "
                         "such as s3://bucket/prefix; a relative or ~ path would be each pod's own disk")
    return value.rstrip("/") or "/"


class Environment(StrictModel):
    profile: str = Field(description="serve-config profile that serveConfigV2 is generated from")
    overlay: str | None = Field(None, description="directory under k8s/overlays (default: the environment's name)")
    batch_storage: Annotated[str, AfterValidator(_batch_storage)] = Field(
        description="`batch.storage` of the router app: a path on a volume every Ray pod mounts, or s3://...")
    ready_timeout_s: float = Field(1800, gt=0, description="default wait of `apply` for the RayService")


class Environments(RootModel[dict[str, Environment]]):
    @field_validator("root")
    @classmethod
    def _names(cls, value: dict[str, Environment]) -> dict[str, Environment]:
        if not value:
            raise ValueError("no environments defined")
        for name in value:
            if not name.replace("-", "").isalnum() or name != name.lower():
                raise ValueError(f"environment name {name!r}: lowercase letters, digits and dashes only")
        return value


class Layout:
    """The k8s/ directory: overlays, the environments file and the generated serve-config patches."""

    def __init__(self, k8s_dir: Path | str | None = None) -> None:
        self.root = Path(k8s_dir) if k8s_dir is not None else DEFAULT_K8S_DIR
        if not (self.root / "environments.yaml").is_file():
            raise KubeRayError(f"{self.root} is not a k8s/ directory of ray-serve-cai (no environments.yaml)")

    def environments(self) -> dict[str, Environment]:
        path = self.root / "environments.yaml"
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise KubeRayError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
        try:
            return Environments.model_validate(raw).root
        except ValidationError as exc:
            raise KubeRayError(f"{path}: {format_validation_error(exc)}") from None

    def environment(self, name: str) -> Environment:
        known = self.environments()
        if name not in known:
            raise KubeRayError(f"unknown environment {name!r}; known: {', '.join(known)}")
        return known[name]

    def resolve(self, env: str, cluster: str | None = None) -> str:
        """The environment's key: ``env``, or ``<cluster>-<env>`` for a named cluster."""
        name = f"{cluster}-{env}" if cluster else env
        known = self.environments()
        if name not in known:
            clusters = sorted({key.split("-", 1)[0] for key in known if "-" in key})
            where = f" of cluster {cluster!r} (clusters: {', '.join(clusters) or 'none'})" if cluster else ""
            raise KubeRayError(f"unknown environment {env!r}{where}; known: {', '.join(known)}")
        return name

    def overlay(self, name: str) -> Path:
        path = self.root / "overlays" / (self.environment(name).overlay or name)
        if not (path / "kustomization.yaml").is_file():
            raise KubeRayError(f"no overlay for environment {name!r} at {path}")
        return path

    def serve_config_patch(self, name: str) -> Path:
        return self.overlay(name) / "serve-config.yaml"
