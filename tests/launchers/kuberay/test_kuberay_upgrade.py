"""`k8s apply` on an environment that already runs: it waits for the generation it wrote and reports
what happened (an upgrade to a new RayCluster, an in-place update), and prunes objects dropped from
the manifests. Real kubectl against the fake API server, whose operator plays KubeRay's upgrade."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fake_apiserver import FakeAPIServer
from kube_schemas import ROOT
from test_kuberay_deploy import add_secrets, cli

APPLY = ("apply", "--env", "dev", "--poll-interval", "0.2", "--timeout", "30")


def k8s_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", copy)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def first_apply(tmp_path: Path, api: FakeAPIServer, k8s: Path, *args: str) -> None:
    add_secrets(api, "ray-dev")
    done = cli(tmp_path, *APPLY, "--k8s-dir", str(k8s), *args, kubeconfig=api.kubeconfig())
    assert done.returncode == 0, done.stderr


def test_apply_waits_for_the_upgrade_and_reports_it(tmp_path):
    """A cluster-spec change: the RayService stays Ready on the old cluster while the new one starts.
    Returning at the first Ready poll (the old behaviour) would report the old cluster."""
    k8s = k8s_copy(tmp_path)
    with FakeAPIServer(ready_after_s=0.3, observe_lag_s=0.6, upgrade_s=1.5) as api:
        first_apply(tmp_path, api, k8s)
        edit(k8s / "overlays" / "dev" / "sizes.yaml", "requests: {cpu: 500m, memory: 1200Mi}, limits: {cpu: 500m, memory: 1200Mi}",
             "requests: {cpu: 500m, memory: 1100Mi}, limits: {cpu: 500m, memory: 1100Mi}")
        done = cli(tmp_path, *APPLY, "--k8s-dir", str(k8s), kubeconfig=api.kubeconfig())
        assert api.store.violations == []
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any("generation 2 not yet observed" in line for line in lines)
    assert any("upgrading to ray-serve-cai-2 (apps: router DEPLOYING)" in line for line in lines)
    assert lines[-1] == ("rayservice ray-dev/ray-serve-cai generation 2: upgraded, traffic moved from RayCluster "
                         "ray-serve-cai-abcde to ray-serve-cai-2")
    status = json.loads(done.stdout)
    assert status["raycluster"] == "ray-serve-cai-2" and status["observed_generation"] == 2
    assert not status["upgrading"] and status["ready"]


def test_an_upgrade_that_never_finishes_is_a_timeout_that_says_so(tmp_path):
    k8s = k8s_copy(tmp_path)
    with FakeAPIServer(ready_after_s=0.2, observe_lag_s=0.2, upgrade_ok=False) as api:
        first_apply(tmp_path, api, k8s)
        edit(k8s / "overlays" / "dev" / "sizes.yaml", "cpu: 500m, memory: 1200Mi}, limits: {cpu: 500m, memory: 1200Mi}",
             "cpu: 400m, memory: 1200Mi}, limits: {cpu: 400m, memory: 1200Mi}")
        done = cli(tmp_path, "apply", "--env", "dev", "--poll-interval", "0.2", "--timeout", "3",
                   "--k8s-dir", str(k8s), kubeconfig=api.kubeconfig())
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ray-serve-cai: error: not settled after 3 s (rayservice ray-dev/ray-serve-cai: ready, "
                           "upgrading to ray-serve-cai-2 (apps: router DEPLOYING); apps: router RUNNING;")
    assert "the upgrade did not finish, RayCluster ray-serve-cai-abcde still serves the previous generation" in last


def test_a_serve_config_change_is_updated_in_place(tmp_path):
    k8s = k8s_copy(tmp_path)
    with FakeAPIServer(ready_after_s=0.2, observe_lag_s=0.6) as api:
        first_apply(tmp_path, api, k8s)
        edit(k8s / "environments.yaml", "dev:\n  profile: dev\n  batch_storage: /mnt/shared/batch",
             "dev:\n  profile: dev\n  batch_storage: /mnt/shared/batch-v2")
        done = cli(tmp_path, *APPLY, "--k8s-dir", str(k8s), kubeconfig=api.kubeconfig())
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "rayservice ray-dev/ray-serve-cai generation 2: updated in place on RayCluster ray-serve-cai-abcde (no new "
        "cluster: a serve-config change, or a cluster-spec change under upgradeStrategy None, which needs "
        "`k8s delete` + `k8s apply`)")


def test_apply_prunes_what_the_manifests_dropped(tmp_path):
    k8s = k8s_copy(tmp_path)
    with FakeAPIServer(ready_after_s=0.2) as api:
        first_apply(tmp_path, api, k8s)
        # an object KubeRay created and labelled like ours (it copies labels): owned, never pruned
        api.add({"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": "ray-serve-cai-head-svc", "namespace": "ray-dev",
            "labels": {"app.kubernetes.io/managed-by": "ray-serve-cai"},
            "ownerReferences": [{"apiVersion": "ray.io/v1", "kind": "RayCluster", "name": "ray-serve-cai-abcde",
                                 "uid": "1"}]}, "spec": {"ports": [{"port": 8265}]}})
        edit(k8s / "overlays" / "dev" / "kustomization.yaml", "  - ../../monitoring\n", "")
        done = cli(tmp_path, *APPLY, "--k8s-dir", str(k8s), "--no-wait", kubeconfig=api.kubeconfig())
        objects = set(api.store.objects)
        assert api.store.violations == []
    assert done.returncode == 0, done.stderr
    pruned = sorted(line for line in done.stderr.splitlines() if line.startswith("pruned "))
    assert pruned == sorted(f"pruned {kind} ray-dev/{name}: no longer in the manifests" for kind, name in [
        ("ConfigMap", "ray-serve-cai-cluster-dashboard"), ("ConfigMap", "ray-serve-cai-dashboard"),
        ("PrometheusRule", "ray-serve-cai"), ("PrometheusRule", "ray-serve-cai-cluster"), ("ServiceMonitor", "ray-serve-cai")])
    assert ("servicemonitors", "ray-dev", "ray-serve-cai") not in objects
    assert ("services", "ray-dev", "ray-serve-cai-head-svc") in objects
    assert ("rayservices", "ray-dev", "ray-serve-cai") in objects and ("secrets", "ray-dev", "ray-serve-cai-api-tls") in objects


def test_a_dropped_volume_claim_is_kept_and_reported(tmp_path):
    k8s = k8s_copy(tmp_path)
    with FakeAPIServer(ready_after_s=0.2) as api:
        first_apply(tmp_path, api, k8s)
        edit(k8s / "overlays" / "dev" / "kustomization.yaml", "  - ../../shared-storage\n", "")
        edit(k8s / "environments.yaml", "dev:\n  profile: dev\n  batch_storage: /mnt/shared/batch",
             "dev:\n  profile: dev\n  batch_storage: s3://bucket/batch")
        edit(k8s / "gpu-engines" / "engine-group.yaml", "            volumeMounts:\n              - {name: shared, mountPath: /mnt/shared}\n", "")
        edit(k8s / "gpu-engines" / "engine-group.yaml", "        volumes:\n          - name: shared\n            persistentVolumeClaim: {claimName: ray-serve-cai-shared}\n", "")
        done = cli(tmp_path, *APPLY, "--k8s-dir", str(k8s), "--no-wait", kubeconfig=api.kubeconfig())
        objects = set(api.store.objects)
    assert done.returncode == 0, done.stderr
    assert ("kept PersistentVolumeClaim ray-dev/ray-serve-cai-shared: no longer in the manifests, but it holds data "
            "(kubectl -n ray-dev delete pvc ray-serve-cai-shared once you no longer need it)") in done.stderr
    assert ("persistentvolumeclaims", "ray-dev", "ray-serve-cai-shared") in objects


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_kcl1_applies_end_to_end(tmp_path, env):
    """`--cluster kcl1 --env ENV`: the seed's namespaces; the Matrix token is required there."""
    namespace = f"ray-{env}"
    with FakeAPIServer(ready_after_s=0.3) as api:
        add_secrets(api, namespace)
        refused = cli(tmp_path, "apply", "--cluster", "kcl1", "--env", env, kubeconfig=api.kubeconfig())
        assert refused.returncode == 1
        assert "ray-serve-cai-matrix (key access-token)" in refused.stderr
        extra = [("ray-serve-cai-matrix", "access-token")] + ([("ray-serve-cai-redis", "password")] if env == "prod" else [])
        add_secrets(api, namespace, *extra)
        done = cli(tmp_path, "apply", "--cluster", "kcl1", "--env", env, "--poll-interval", "0.2", "--timeout", "30",
                   kubeconfig=api.kubeconfig())
        assert api.store.violations == []
        objects = set(api.store.objects)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == f"context fake: applying environment kcl1-{env} to namespace {namespace}"
    status = json.loads(done.stdout)
    assert sorted(p["component"] for p in status["pods"]) == ["head"] + ["router"] * (2 if env == "dev" else 3)
    assert (("persistentvolumeclaims", namespace, "ray-serve-cai-head-logs") in objects) == (env == "prod")
