"""k8s/environments.yaml is validated at load, and errors point at the bad key."""

from __future__ import annotations

import shutil

import pytest
from kube_schemas import ROOT

from launchers.kuberay.environments import Layout
from launchers.kuberay.errors import KubeRayError


@pytest.fixture
def k8s(tmp_path):
    copy = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", copy, ignore=shutil.ignore_patterns("schemas"))
    return copy


def test_shipped_environments(layout):
    environments = layout.environments()
    assert list(environments) == ["dev", "staging", "prod"]
    assert {name: env.profile for name, env in environments.items()} == {"dev": "dev", "staging": "prod", "prod": "prod"}


@pytest.mark.parametrize("text, message", [
    ("dev: {profile: dev, ready_timeout_s: -1}\n", "dev.ready_timeout_s: Input should be greater than 0"),
    ("dev: {profil: dev}\n", "dev.profile: Field required; dev.profil: Extra inputs are not permitted"),
    ("Dev: {profile: dev}\n", "environment name 'Dev': lowercase letters, digits and dashes only"),
    ("dev: [profile\n", "is not valid YAML"),
])
def test_bad_environments_file_names_the_key(k8s, text, message):
    (k8s / "environments.yaml").write_text(text)
    with pytest.raises(KubeRayError, match="environments.yaml") as info:
        Layout(k8s).environments()
    assert message in str(info.value)


def test_not_a_k8s_directory_and_missing_overlay(tmp_path, k8s):
    with pytest.raises(KubeRayError, match="is not a k8s/ directory of ray-serve-cai"):
        Layout(tmp_path)
    shutil.rmtree(k8s / "overlays" / "staging")
    with pytest.raises(KubeRayError, match="no overlay for environment 'staging'"):
        Layout(k8s).overlay("staging")
