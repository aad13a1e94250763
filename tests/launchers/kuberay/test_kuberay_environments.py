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
    assert list(environments) == ["kcl1-dev", "kcl1-staging", "kcl1-prod", "dev", "staging", "prod"]
    assert {name: env.profile for name, env in environments.items()} == {
        "kcl1-dev": "kcl1-dev", "kcl1-staging": "kcl1", "kcl1-prod": "kcl1", "dev": "dev", "staging": "prod", "prod": "prod"}
    # every environment keeps its batch files on shared storage
    assert {env.batch_storage for env in environments.values()} == {"/mnt/shared/batch"}
    assert layout.overlay("kcl1-dev") == layout.root / "overlays" / "kcl1" / "dev"


def test_cluster_and_env_pick_an_environment(layout):
    assert layout.resolve("dev", "kcl1") == "kcl1-dev"
    assert layout.resolve("dev") == "dev"
    with pytest.raises(KubeRayError, match="unknown environment 'qa' of cluster 'kcl1' \\(clusters: kcl1\\); known: "):
        layout.resolve("qa", "kcl1")


@pytest.mark.parametrize("text, message", [
    ("dev: {profile: dev, batch_storage: /mnt/shared, ready_timeout_s: -1}\n",
     "dev.ready_timeout_s: Input should be greater than 0"),
    ("dev: {profil: dev, batch_storage: /mnt/shared}\n",
     "dev.profile: Field required; dev.profil: Extra inputs are not permitted"),
    ("Dev: {profile: dev, batch_storage: /mnt/shared}\n", "environment name 'Dev': lowercase letters, digits and dashes only"),
    ("dev: [profile\n", "is not valid YAML"),
    # each pod's own ~/.cache is not storage that job actors moving between nodes can share
    ("dev: {profile: dev, batch_storage: ~/.cache/ray-serve-cai/batch}\n",
     "dev.batch_storage: Value error, '~/.cache/ray-serve-cai/batch': an absolute path that every Ray pod mounts"),
    ("dev: {profile: dev}\n", "dev.batch_storage: Field required"),
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
