"""The defects an outside review found in the rendered manifests (issue #29, part 2), each checked on
every environment, and each check shown to catch the defect as it was."""

from __future__ import annotations

import copy
import shutil
from typing import Any

import pytest
import yaml
from conftest import ENVIRONMENTS, KCL1_ENVIRONMENTS, kubectl_binary
from kube_schemas import ROOT, problems

from launchers.kuberay import checks
from launchers.kuberay.errors import KubeRayError
from launchers.kuberay.kubectl import Kubectl
from launchers.kuberay.render import Rendered


def mutated(r: Rendered) -> Rendered:
    return Rendered(r.env, r.profile, copy.deepcopy(r.documents))


def cluster(r: Rendered) -> dict[str, Any]:
    return r.rayservice["spec"]["rayClusterConfig"]


def templates(r: Rendered) -> dict[str, dict[str, Any]]:
    return {"head": cluster(r)["headGroupSpec"]["template"],
            **{g["groupName"]: g["template"] for g in cluster(r)["workerGroupSpecs"]}}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_disruption_budgets_allow_evictions(rendered, env):
    r = rendered[env]
    checks.check_disruption_budgets(r)
    pods = {g["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: g["minReplicas"]
            for g in cluster(r)["workerGroupSpecs"]}
    for pdb in r.find("PodDisruptionBudget"):
        spec = pdb["spec"]
        assert "maxUnavailable" not in spec and isinstance(spec["minAvailable"], int)
        assert spec["minAvailable"] == max(pods[spec["selector"]["matchLabels"]["app.kubernetes.io/component"]] - 1, 0)


def test_disruption_budget_check_catches_max_unavailable_and_a_blocking_min(rendered):
    bad = mutated(rendered["prod"])
    pdb = bad.one("PodDisruptionBudget", "ray-serve-cai-router")["spec"]
    del pdb["minAvailable"]
    pdb["maxUnavailable"] = 1  # what the manifests had: no eviction is ever allowed
    with pytest.raises(KubeRayError, match="use an integer minAvailable"):
        checks.check_disruption_budgets(bad)
    pdb.pop("maxUnavailable")
    pdb["minAvailable"] = "50%"
    with pytest.raises(KubeRayError, match="use an integer minAvailable"):
        checks.check_disruption_budgets(bad)
    pdb["minAvailable"] = 2  # two router pods: nothing could be evicted
    with pytest.raises(KubeRayError, match="minAvailable 2 leaves no eviction for group router of 2 pods \\(use 1\\)"):
        checks.check_disruption_budgets(bad)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_operator_reaches_the_heads_serve_port(rendered, env):
    """KubeRay checks the head's Serve proxy (8000) on every reconcile, besides 8265 and 52365."""
    head = rendered[env].one("NetworkPolicy", "ray-serve-cai-head")["spec"]["ingress"]
    operator = [rule for rule in head if rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "ray-system"}}}]]
    assert len(operator) == 1
    assert {p["port"] for p in operator[0]["ports"]} == {8000, 8265, 52365}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_object_store_is_not_capped_by_a_shm_volume(rendered, env):
    """KubeRay mounts /dev/shm sized to the container's memory; a smaller one of ours pushed the object
    store to disk. kcl1 sizes the object store explicitly, well inside the pod."""
    r = rendered[env]
    for name, template in templates(r).items():
        mounts = [m for c in template["spec"]["containers"] for m in c.get("volumeMounts", [])]
        assert not [m for m in mounts if m["mountPath"] == "/dev/shm"], name
        assert not [v for v in template["spec"].get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"]
    if env in KCL1_ENVIRONMENTS:
        from test_kuberay_manifests import _mebibytes

        groups = {"head": cluster(r)["headGroupSpec"], **{g["groupName"]: g for g in cluster(r)["workerGroupSpecs"]}}
        for name, group in groups.items():
            store = int(group["rayStartParams"]["object-store-memory"]) / 2**20
            memory = _mebibytes(group["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
            assert 75 <= store <= 0.1 * memory, (name, store, memory)  # Ray's minimum; a tenth of the pod


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_batch_storage_is_shared_by_every_ray_pod(rendered, layout, env):
    r = rendered[env]
    storage = r.serve_config["applications"][0]["args"]["batch"]["storage"]
    assert storage == layout.environment(env).batch_storage == "/mnt/shared/batch"
    pvc = r.one("PersistentVolumeClaim", "ray-serve-cai-shared")["spec"]
    assert pvc["accessModes"] == ["ReadWriteMany"]
    if env in KCL1_ENVIRONMENTS:
        assert pvc["storageClassName"] == "nfs-csi"  # kcl1's NFS
    for name, template in templates(r).items():
        mounts = {m["mountPath"]: m["name"] for m in template["spec"]["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes[mounts["/mnt/shared"]]["persistentVolumeClaim"]["claimName"] == "ray-serve-cai-shared", name
    checks.check_shared_storage(r)


def test_shared_storage_check_catches_a_pod_without_the_volume(rendered):
    bad = mutated(rendered["staging"])
    engine = templates(bad)["engine"]["spec"]
    engine["containers"][0]["volumeMounts"] = []
    with pytest.raises(KubeRayError, match="batch.storage is '/mnt/shared/batch', but the engine pods do not mount "
                                           "a ReadWriteMany volume there"):
        checks.check_shared_storage(bad)
    # the per-pod default of the serve config, as the manifests had it
    default = mutated(rendered["dev"])
    spec = default.rayservice["spec"]
    config = yaml.safe_load(spec["serveConfigV2"])
    config["applications"][0]["args"].pop("batch")
    spec["serveConfigV2"] = yaml.safe_dump(config)
    with pytest.raises(KubeRayError, match="batch.storage is '~/.cache/ray-serve-cai/batch', but the head pods"):
        checks.check_shared_storage(default)
    # object storage needs no volume
    config["applications"][0]["args"]["batch"] = {"storage": "s3://bucket/batch"}
    spec["serveConfigV2"] = yaml.safe_dump(config)
    checks.check_shared_storage(default)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_ingress_takes_the_documented_upload(rendered, env):
    r = rendered[env]
    annotations = r.one("Ingress", "ray-serve-cai-api")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "256m"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    checks.check_body_limit(r)
    bad = mutated(r)
    bad.one("Ingress", "ray-serve-cai-api")["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] = "8m"
    with pytest.raises(KubeRayError, match="proxy-body-size 8m is below the router's upload limit"):
        checks.check_body_limit(bad)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_pod_ranges_match_the_serve_configs_replica_ranges(rendered, env):
    checks.check_pod_ranges(rendered[env])


def test_pod_range_check_catches_the_old_staging_ranges(rendered):
    """staging had GPU pods 2-4 for engines autoscaled 2-8, and router pods 2-4 for 2 fixed replicas."""
    bad = mutated(rendered["staging"])
    engine = next(g for g in cluster(bad)["workerGroupSpecs"] if g["groupName"] == "engine")
    engine["maxReplicas"] = 4
    with pytest.raises(KubeRayError, match="worker group engine has 2-4 pods of 1 GPU, but profile 'prod' asks for "
                                           "2-8 GPU \\(2-8 pods\\)"):
        checks.check_pod_ranges(bad)
    engine["maxReplicas"] = 8
    router = next(g for g in cluster(bad)["workerGroupSpecs"] if g["groupName"] == "router")
    router["maxReplicas"] = 4
    with pytest.raises(KubeRayError, match="worker group router has 2-4 pods of 1 CPU, but profile 'prod' asks for 2-2 CPU"):
        checks.check_pod_ranges(bad)
    gpu_less = mutated(rendered["prod"])
    cluster(gpu_less)["workerGroupSpecs"] = [g for g in cluster(gpu_less)["workerGroupSpecs"] if g["groupName"] != "engine"]
    with pytest.raises(KubeRayError, match="asks for 8 GPU but no worker group offers GPU"):
        checks.check_pod_ranges(gpu_less)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_tls_token_auth_and_an_internal_dashboard(rendered, env):
    r = rendered[env]
    checks.check_tls(r)
    api = r.one("Ingress", "ray-serve-cai-api")["spec"]
    assert api["tls"] == [{"hosts": [api["rules"][0]["host"]], "secretName": "ray-serve-cai-api-tls"}]
    assert cluster(r)["authOptions"] == {"mode": "token"}  # KubeRay generates the token Secret
    # nothing outside the namespace reaches the dashboard but the operator
    assert not [i for i in r.find("Ingress") if "8265" in str(i["spec"])]
    for policy in r.find("NetworkPolicy"):
        for rule in policy["spec"]["ingress"]:
            if any(p["port"] == 8265 for p in rule.get("ports", [])):
                assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ray-system"}
    bad = mutated(r)
    bad.one("Ingress", "ray-serve-cai-api")["spec"].pop("tls")
    with pytest.raises(KubeRayError, match="serves api.* without TLS"):
        checks.check_tls(bad)


def test_authoptions_is_the_vendored_crds_field(rendered):
    """The field and its values come from KubeRay 1.7's CRD (k8s/schemas): a wrong mode is refused."""
    bad = mutated(rendered["dev"])
    cluster(bad)["authOptions"] = {"mode": "tokens"}
    assert any("authOptions.mode" in p for p in problems(bad.rayservice))


def test_dashboard_ingress_component_is_opt_in_and_valid(tmp_path):
    copy_dir = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", copy_dir)
    kustomization = copy_dir / "overlays" / "dev" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("  - ../../monitoring\n",
                                                               "  - ../../monitoring\n  - ../../dashboard-ingress\n"))
    docs = [d for d in yaml.safe_load_all(Kubectl(binary=kubectl_binary()).kustomize(copy_dir / "overlays" / "dev")) if d]
    r = Rendered("dev", "dev", docs)
    dashboard = r.one("Ingress", "ray-serve-cai-dashboard")
    assert dashboard["spec"]["tls"][0]["secretName"] == "ray-serve-cai-dashboard-tls"
    assert ("ray-serve-cai-dashboard-auth", "auth") in r.required_secrets()
    assert ("ray-serve-cai-dashboard-tls", "tls.crt") in r.required_secrets()
    for doc in (dashboard, r.one("NetworkPolicy", "ray-serve-cai-dashboard")):
        assert problems(doc) == []


@pytest.mark.parametrize("env", ["prod", "kcl1-dev"])
def test_probes_still_answer_under_token_auth(rendered, env):
    """With authOptions every Ray HTTP endpoint wants the token, except those Ray keeps public: the
    router pods' liveness probe must ask one of those (the readiness probe asks the router, not Ray)."""
    from ray.dashboard.http_server_agent import PUBLIC_EXACT_PATHS

    router = next(g for g in cluster(rendered[env])["workerGroupSpecs"] if g["groupName"] == "router")
    container = router["template"]["spec"]["containers"][0]
    command = " ".join(container["livenessProbe"]["exec"]["command"])
    paths = [p for p in PUBLIC_EXACT_PATHS if f"localhost:52365{p}" in command]
    assert paths == ["/api/local_raylet_healthz"], command
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"  # the router's readiness: 200 only while its models can be generated
