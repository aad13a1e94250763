"""kcl1, the seed's own cluster (seed 004, "Infrastructure Analysis" and "Multi-Environment Setup"):
MicroK8s, 4 workers of ~1.2 Gi usable, no GPUs, NFS, the Rocket backends. Its environments render and
validate (test_kuberay_manifests.py runs every generic check on them too); here, what the seed fixes."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import KCL1_ENVIRONMENTS

# The seed's sizes: head (cpu, memory), worker memory and CPU, log PVC. Worker CPU in staging is not
# in the seed: it runs prod's 1000m. Worker counts: see test_router_replicas_fill_the_worker_pods.
SEED = {
    "kcl1-dev": {"namespace": "ray-dev", "head": ("500m", "1Gi"), "worker": ("500m", "1.2Gi"), "logs": None},
    "kcl1-staging": {"namespace": "ray-staging", "head": ("750m", "1.2Gi"), "worker": ("1000m", "1.2Gi"), "logs": "500Mi"},
    "kcl1-prod": {"namespace": "ray-prod", "head": ("1000m", "1.5Gi"), "worker": ("1000m", "1.4Gi"), "logs": "1Gi"},
}
# Per kcl1 worker node (seed: "~1.8Gi allocatable", "Existing pods: ~200Mi", "Available: ~1.2Gi").
NODE_ALLOCATABLE_MIB = 1.8 * 1024
EXISTING_PODS_MIB = 200
NODE_USABLE_MIB = 1.2 * 1024


def cluster(rendered, env: str) -> dict[str, Any]:
    return rendered[env].rayservice["spec"]["rayClusterConfig"]


def all_containers(rendered, env: str) -> list[dict[str, Any]]:
    spec = cluster(rendered, env)
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [c for t in templates for c in t["spec"]["containers"]]


@pytest.mark.parametrize("env", KCL1_ENVIRONMENTS)
def test_sizes_are_the_seeds(rendered, env):
    seed, spec = SEED[env], cluster(rendered, env)
    assert rendered[env].namespace == seed["namespace"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    cpu, memory = seed["head"]
    assert head == {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    (router,) = spec["workerGroupSpecs"]
    cpu, memory = seed["worker"]
    assert router["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}


@pytest.mark.parametrize("env", KCL1_ENVIRONMENTS)
def test_one_ray_pod_per_node_fits(rendered, env):
    """kcl1 has 4 worker nodes: the head and every worker pod get a node each, inside what a node has."""
    from test_kuberay_manifests import _mebibytes

    spec = cluster(rendered, env)
    (router,) = spec["workerGroupSpecs"]
    assert 1 + router["maxReplicas"] <= 4
    worker = _mebibytes(router["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
    head = _mebibytes(spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
    for memory in (worker, head):  # schedulable beside the node's existing pods
        assert memory <= NODE_ALLOCATABLE_MIB - EXISTING_PODS_MIB
    if env == "kcl1-dev":  # dev stays inside the seed's "available" figure
        assert max(worker, head) <= NODE_USABLE_MIB + 1


@pytest.mark.parametrize("env", KCL1_ENVIRONMENTS)
def test_no_gpu_and_no_model_hosting(rendered, env):
    """Design principle 2: Ray routes, it hosts no model."""
    assert "nvidia.com/gpu" not in str(rendered[env].rayservice)
    assert all(g["rayStartParams"]["num-gpus"] == "0" for g in cluster(rendered, env)["workerGroupSpecs"])
    assert not list(rendered[env].find("PodDisruptionBudget", "ray-serve-cai-engine"))
    (app,) = rendered[env].serve_config["applications"]
    assert app["args"].get("engines", []) == []
    assert all(backend["kind"] != "serve" for backend in app["args"]["backends"])


@pytest.mark.parametrize("env", KCL1_ENVIRONMENTS)
def test_router_batch_and_matrix_over_the_seeds_backends(rendered, env):
    (app,) = rendered[env].serve_config["applications"]
    args = app["args"]
    urls = {b["name"]: (b["kind"], b["url"], b["tier"]) for b in args["backends"]}
    assert urls == {
        "vllm": ("openai", "http://rocket-vllm-service.rocket:8000", 0),
        "ollama": ("ollama", "http://rocket-ollama-service.rocket:11434", 1),
        "lm-studio": ("openai", "http://wks-bckx01:1234", 2),
        "anthropic": ("anthropic", "https://api.anthropic.com", 3),
    }
    assert args["batch"] == {"storage": "/mnt/shared/batch"}  # the batch API on, on the NFS volume
    matrix = args["matrix"]
    assert (matrix["homeserver"], matrix["user_id"]) == ("http://srv1:8008", "@ray-bot:srv1.local")
    assert matrix["access_token"] == {"env": "MATRIX_ACCESS_TOKEN"} and matrix["store_path"].startswith("/mnt/shared/")
    assert dict(rendered[env].required_secrets())["ray-serve-cai-matrix"] == "access-token"


@pytest.mark.parametrize("env", KCL1_ENVIRONMENTS)
def test_router_replicas_fill_the_worker_pods(rendered, env):
    """One router replica per 1-CPU worker pod, fixed: the seed's dev has 2 workers, staging and prod
    3 (their "min 2, max 4" would never be used by a router whose replica count is fixed)."""
    (router,) = cluster(rendered, env)["workerGroupSpecs"]
    (app,) = rendered[env].serve_config["applications"]
    replicas = app["args"]["router"]["num_replicas"]
    assert replicas == (2 if env == "kcl1-dev" else 3)
    assert router["replicas"] == router["minReplicas"] == router["maxReplicas"] == replicas
    assert router["rayStartParams"]["num-cpus"] == "1" and app["args"]["router"]["num_cpus"] == 1
    assert cluster(rendered, env)["enableInTreeAutoscaling"] is False


@pytest.mark.parametrize("env", KCL1_ENVIRONMENTS)
def test_log_volumes_where_the_seed_has_them(rendered, env):
    claims = {c["metadata"]["name"]: c["spec"] for c in rendered[env].find("PersistentVolumeClaim")}
    logs = SEED[env]["logs"]
    head = cluster(rendered, env)["headGroupSpec"]["template"]
    mounts = {m["mountPath"] for m in head["spec"]["containers"][0]["volumeMounts"]}
    if logs is None:
        assert set(claims) == {"ray-serve-cai-shared"} and "/tmp/ray" not in mounts
        return
    assert claims["ray-serve-cai-head-logs"]["resources"]["requests"]["storage"] == logs
    assert claims["ray-serve-cai-head-logs"]["storageClassName"] == "nfs-csi"
    assert "/tmp/ray" in mounts
    env_vars = {e["name"]: e["value"] for e in head["spec"]["containers"][0]["env"]}
    # Ray's default rotation (512 MB per file) would fill the volume
    assert int(env_vars["RAY_ROTATION_MAX_BYTES"]) * (1 + int(env_vars["RAY_ROTATION_BACKUP_COUNT"])) * 20 < 250 * 2**20


@pytest.mark.parametrize("env", KCL1_ENVIRONMENTS)
def test_prometheus_in_prod_ha_and_no_second_cluster(rendered, env):
    kinds = {doc["kind"] for doc in rendered[env].documents}
    assert ("ServiceMonitor" in kinds) == (env == "kcl1-prod")
    assert ("gcsFaultToleranceOptions" in cluster(rendered, env)) == (env == "kcl1-prod")
    # no room for a NewCluster upgrade's second cluster on four small nodes
    assert rendered[env].rayservice["spec"]["upgradeStrategy"] == {"type": "None"}
