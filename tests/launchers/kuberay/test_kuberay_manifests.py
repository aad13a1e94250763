"""Every overlay rendered by the launcher (real `kubectl kustomize`) and checked offline: schemas,
the generated serveConfigV2, the front door, Secrets, non-root pods, budgets and label wiring."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ENVIRONMENTS, GPU_ENVIRONMENTS, namespace_of
from kube_schemas import K8S_VERSION, ROOT, problems

from launchers.kuberay.render import Rendered, check_front_door
from launchers.kuberay.serve_config import build_config, environment_config, patched_value, serve_config_v2
from serve_apps.checks import config_problems

K8S = ROOT / "k8s"
# Per-environment budgets of the head and the CPU (router) worker pods: cpu millicores, memory MiB,
# and the most worker pods. GPU (engine) pods host the model and have budgets of their own.
# kcl1's are the seed's (seed 004, "Multi-Environment Setup"); test_kuberay_kcl1.py holds them exactly.
BUDGETS = {
    "dev": {"head": (500, 1024), "router": (500, 1229, 2), "engine": (4000, 16384, 1)},
    "staging": {"head": (750, 1229), "router": (1000, 1229, 4), "engine": (8000, 32768, 8)},
    "prod": {"head": (1000, 1536), "router": (1000, 1434, 4), "engine": (8000, 32768, 8)},
    "kcl1-dev": {"head": (500, 1024), "router": (500, 1229, 2)},
    "kcl1-staging": {"head": (750, 1229), "router": (1000, 1229, 4)},
    "kcl1-prod": {"head": (1000, 1536), "router": (1000, 1434, 4)},
}


def groups(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in rendered.rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def pod_templates(rendered: Rendered) -> dict[str, dict[str, Any]]:
    cluster = rendered.rayservice["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"]["template"], **{n: g["template"] for n, g in groups(rendered).items()}}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_object_validates_against_its_schema(rendered, env):
    for doc in rendered[env].documents:
        assert problems(doc) == [], (doc["kind"], doc["metadata"]["name"])
        assert problems(doc, "1.37") == [], (doc["kind"], doc["metadata"]["name"])
    kinds = sorted({doc["kind"] for doc in rendered[env].documents})
    monitoring = ["ConfigMap", "PrometheusRule", "ServiceMonitor"] if env != "kcl1-dev" and env != "kcl1-staging" else []
    assert kinds == sorted(["Ingress", "Namespace", "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget",
                            "RayService", "Service", *monitoring])
    assert {doc["metadata"].get("namespace") for doc in rendered[env].documents if doc["kind"] != "Namespace"} == {namespace_of(env)}
    # every object carries the label `apply` prunes by
    assert all(doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ray-serve-cai" for doc in rendered[env].documents)


def test_validators_catch_mistakes(rendered):
    """The checks above can fail: a typo in a built-in kind and in each custom resource is reported."""
    docs = {doc["kind"]: doc for doc in rendered["prod"].documents}
    service = yaml.safe_load(yaml.safe_dump(docs["Service"]))
    service["spec"]["ports"][0]["targetPortt"] = 1
    assert problems(service)
    ray = yaml.safe_load(yaml.safe_dump(docs["RayService"]))
    ray["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    assert problems(ray)
    rule = yaml.safe_load(yaml.safe_dump(docs["PrometheusRule"]))
    rule["spec"]["groups"][0]["rules"][0]["exprr"] = "up"
    assert problems(rule)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_serve_config_is_the_generators_output_and_valid(rendered, layout, env):
    environment = layout.environment(env)
    config = rendered[env].serve_config
    assert config == environment_config(environment)
    assert config_problems(config) == []
    # the profile's config, but for the environment's shared batch storage
    expected = build_config(environment.profile)
    expected["applications"][0]["args"]["batch"] = {"storage": environment.batch_storage}
    assert config == expected
    # the checked-in overlay patch is what the generator writes today
    assert patched_value(layout.serve_config_patch(env).read_text()) == serve_config_v2(environment)


def test_one_serve_config_runs_everywhere():
    """staging and prod deploy serve_configs/prod.yaml unchanged: the file `serve deploy` uses locally
    and on CML."""
    shipped = yaml.safe_load((ROOT / "serve_configs" / "prod.yaml").read_text())
    assert build_config("prod") == shipped


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_front_door_is_one_parameter_used_everywhere(rendered, layout, env):
    r = rendered[env]
    port = r.front_door_port
    front_door = yaml.safe_load((layout.overlay(env) / "front-door.yaml").read_text())
    assert port == int(front_door["data"]["port"])
    router = groups(r)["router"]["template"]["spec"]["containers"][0]
    assert router["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port}
    assert {"name": "api", "containerPort": port} in router["ports"]  # the pods declare the front door
    api_policy = r.one("NetworkPolicy", "ray-serve-cai-api")["spec"]["ingress"]
    assert api_policy[0]["ports"] == [{"protocol": "TCP", "port": port}]
    listen = r.serve_config["applications"][0]["args"]["router"]["listen"]
    assert (listen["host"], listen["port"]) == ("0.0.0.0", port)
    check_front_door(r)  # does not raise


def test_front_door_must_be_a_port_the_serve_config_opens(rendered):
    from launchers.kuberay.errors import KubeRayError

    r = rendered["dev"]
    bad = yaml.safe_load(yaml.safe_dump(r.documents))
    api = next(d for d in bad if d["kind"] == "Service" and d["metadata"]["name"] == "ray-serve-cai-api")
    api["spec"]["ports"][0]["targetPort"] = 8123
    with pytest.raises(KubeRayError, match="port 8123, but profile 'dev' opens only \\[8000, 8001\\]"):
        check_front_door(Rendered("dev", "dev", bad))
    api["spec"]["ports"][0]["targetPort"] = 8000  # Serve's proxy: also a door of this config
    check_front_door(Rendered("dev", "dev", bad))


def test_front_door_port_change_reaches_every_use(tmp_path):
    """Changing front-door.yaml alone moves the Service, probe and NetworkPolicy (kustomize replacements)."""
    import shutil

    from conftest import kubectl_binary

    from launchers.kuberay.kubectl import Kubectl

    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    door = copy / "overlays" / "dev" / "front-door.yaml"
    door.write_text(door.read_text().replace('port: "8001"', 'port: "8000"'))
    docs = [d for d in yaml.safe_load_all(Kubectl(binary=kubectl_binary()).kustomize(copy / "overlays" / "dev")) if d]
    r = Rendered("dev", "dev", docs)
    assert r.front_door_port == 8000
    router = groups(r)["router"]["template"]["spec"]["containers"][0]
    assert router["readinessProbe"]["httpGet"]["port"] == 8000
    assert {"name": "api", "containerPort": 8000} in router["ports"]
    assert r.one("NetworkPolicy", "ray-serve-cai-api")["spec"]["ingress"][0]["ports"][0]["port"] == 8000
    assert not any(d["metadata"]["name"] == "ray-serve-cai-front-door" for d in docs)  # local-config only


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_cluster_shape(rendered, env):
    r = rendered[env]
    cluster = r.rayservice["spec"]["rayClusterConfig"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ray_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray[")).split("==")[1]
    assert cluster["rayVersion"] == ray_pin
    assert r.rayservice["apiVersion"] == "ray.io/v1"
    head = cluster["headGroupSpec"]["rayStartParams"]
    assert (head["num-cpus"], head["num-gpus"]) == ("0", "0")  # no replicas, no GPU work on the coordinator
    g = groups(r)
    gpu = env in GPU_ENVIRONMENTS
    assert set(g) == ({"router", "engine"} if gpu else {"router"})
    if gpu:
        assert g["engine"]["rayStartParams"]["num-cpus"] == "0"  # CPU-only replicas never land on GPU pods
        engine = g["engine"]["template"]["spec"]["containers"][0]["resources"]
        assert engine["requests"]["nvidia.com/gpu"] == engine["limits"]["nvidia.com/gpu"] == "1"
    # every engine replica asks for no CPU, or it could not be placed on a GPU pod
    for app in r.serve_config["applications"]:
        for engine_args in app["args"].get("engines", []):
            assert engine_args["device"] == "gpu" and engine_args.get("num_cpus") == 0
    autoscaling = cluster["enableInTreeAutoscaling"]
    if env in ("staging", "prod"):  # the GPU group follows the engines' autoscaling; the router is fixed
        assert autoscaling
        assert (g["router"]["minReplicas"], g["router"]["maxReplicas"]) == (2, 2)
        assert (g["engine"]["minReplicas"], g["engine"]["maxReplicas"]) == (2, 8)
    else:
        assert not autoscaling and "autoscalerOptions" not in cluster
        assert all(x["replicas"] == x["minReplicas"] == x["maxReplicas"] for x in g.values())
    fault_tolerance = cluster.get("gcsFaultToleranceOptions")
    if env.endswith("prod"):
        assert fault_tolerance["redisPassword"] == {"valueFrom": {"secretKeyRef": {"name": "ray-serve-cai-redis", "key": "password"}}}
    else:
        assert fault_tolerance is None


def _millicores(value: str) -> int:
    return int(value[:-1]) if str(value).endswith("m") else int(float(value) * 1000)


def _mebibytes(value: str) -> float:
    units = {"Mi": 1, "Gi": 1024, "Ki": 1 / 1024}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi)", str(value))
    assert match, value
    return float(match.group(1)) * units[match.group(2)]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_resource_requests_fit_the_budgets(rendered, env):
    r = rendered[env]
    cluster = r.rayservice["spec"]["rayClusterConfig"]
    budget = BUDGETS[env]

    def pod_requests(template: dict[str, Any], extra: list[dict[str, Any]] = ()) -> tuple[int, float]:
        requests = [c["resources"]["requests"] for c in template["spec"]["containers"]] + list(extra)
        for container in template["spec"]["containers"]:
            assert container["resources"]["limits"]["memory"] == container["resources"]["requests"]["memory"]
        return sum(_millicores(q["cpu"]) for q in requests), sum(_mebibytes(q["memory"]) for q in requests)

    sidecar = [cluster["autoscalerOptions"]["resources"]["requests"]] if cluster.get("enableInTreeAutoscaling") else []
    cpu, memory = pod_requests(cluster["headGroupSpec"]["template"], sidecar)
    assert cpu <= budget["head"][0] and memory <= budget["head"][1], (cpu, memory)
    for name, group in groups(r).items():
        cpu, memory = pod_requests(group["template"])
        max_cpu, max_memory, max_pods = budget[name]
        assert cpu <= max_cpu and memory <= max_memory and group["maxReplicas"] <= max_pods, (name, cpu, memory)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_no_container_runs_as_root(rendered, env):
    cluster = rendered[env].rayservice["spec"]["rayClusterConfig"]
    for name, template in pod_templates(rendered[env]).items():
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, name
        for container in template["spec"]["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    if cluster.get("enableInTreeAutoscaling"):
        assert cluster["autoscalerOptions"]["securityContext"]["runAsNonRoot"] is True
    containerfile = (K8S / "image" / "Containerfile").read_text()
    assert re.search(r"^USER 1000:100$", containerfile, re.M)


def test_containerfile_uses_the_pinned_ray_image():
    containerfile = (K8S / "image" / "Containerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ray_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray[")).split("==")[1]
    assert f"ARG RAY_VERSION={ray_pin}\n" in containerfile
    assert "FROM docker.io/rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${VARIANT:+-}${VARIANT}\n" in containerfile
    python = pyproject["project"]["requires-python"].removeprefix(">=").replace(".", "")
    assert f"ARG PYTHON_TAG=py{python}\n" in containerfile
    for path in re.findall(r"^COPY --chown=\S+ (\S+) \./", containerfile, re.M):
        assert (ROOT / path).exists(), path
    extras = pyproject["project"]["optional-dependencies"]
    assert "matrix" in extras and "gpu" in extras  # the image's extras exist


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_images_come_from_the_containerfile(rendered, env):
    images = {name: t["spec"]["containers"][0]["image"] for name, t in pod_templates(rendered[env]).items()}
    assert images["head"] == images["router"] == "ghcr.io/example/ray-serve-cai:0.1.0"
    if env in GPU_ENVIRONMENTS:
        assert images["engine"] == "ghcr.io/example/ray-serve-cai:0.1.0-gpu"


def _secrets_in(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and d.get("kind") == "Secret"]


def test_no_secret_carries_a_value(rendered):
    templates = _secrets_in(K8S / "secrets" / "secrets.template.yaml")
    assert {s["metadata"]["name"] for s in templates} >= {
        "ray-serve-cai-router-keys", "ray-serve-cai-backend-keys", "ray-serve-cai-matrix", "ray-serve-cai-redis"}
    for secret in templates:
        assert problems(secret) == []
        assert "data" not in secret and all(v == "" for v in secret["stringData"].values()), secret["metadata"]["name"]
    # nothing under k8s/ holds a Secret with a value, and the rendered environments hold no Secret at all
    for path in K8S.rglob("*.yaml"):
        if path.parent.name == "schemas":
            continue
        for secret in _secrets_in(path):
            assert not secret.get("data") and not any(secret.get("stringData", {}).values()), path
    for r in rendered.values():
        assert not list(r.find("Secret"))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_referenced_secret_has_a_template(rendered, env):
    templates = {s["metadata"]["name"]: s for s in _secrets_in(K8S / "secrets" / "secrets.template.yaml")}
    from launchers.kuberay.render import _secret_refs

    refs = [(ref["name"], ref["key"]) for ref in _secret_refs(rendered[env].rayservice)]
    refs += rendered[env].required_secrets()
    assert refs
    for name, key in refs:
        assert key in templates[name]["stringData"], (name, key)
    required = dict(rendered[env].required_secrets())
    assert required["ray-serve-cai-router-keys"] == "api-keys"
    assert ("ray-serve-cai-redis" in required) == env.endswith("prod")
    assert required["ray-serve-cai-api-tls"] == "tls.crt"
    assert ("ray-serve-cai-matrix" in required) == env.startswith("kcl1-")  # its serve config runs the bot


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_selectors_reach_the_pods_they_mean(rendered, env):
    r = rendered[env]
    labels = {name: t["metadata"]["labels"] for name, t in pod_templates(r).items()}

    def selected(selector: dict[str, str]) -> set[str]:
        return {name for name, pod in labels.items() if selector.items() <= pod.items()}

    assert selected(r.one("Service", "ray-serve-cai-api")["spec"]["selector"]) == {"router"}
    assert selected(r.one("Service", "ray-serve-cai-metrics")["spec"]["selector"]) == set(labels)
    assert selected(r.one("PodDisruptionBudget", "ray-serve-cai-router")["spec"]["selector"]["matchLabels"]) == {"router"}
    if "engine" in labels:
        assert selected(r.one("PodDisruptionBudget", "ray-serve-cai-engine")["spec"]["selector"]["matchLabels"]) == {"engine"}
    else:
        assert not list(r.find("PodDisruptionBudget", "ray-serve-cai-engine"))
    policies = {p["metadata"]["name"]: p["spec"] for p in r.find("NetworkPolicy")}
    assert selected(policies["ray-serve-cai-api"]["podSelector"]["matchLabels"]) == {"router"}
    assert selected(policies["ray-serve-cai-head"]["podSelector"]["matchLabels"]) == {"head"}
    # workers reach the head (and each other) on every port; Prometheus reaches the metrics ports
    cluster_rule = policies["ray-serve-cai-cluster"]["ingress"][0]
    assert "ports" not in cluster_rule and selected(cluster_rule["from"][0]["podSelector"]["matchLabels"]) == set(labels)
    metrics_ports = {p["port"] for p in policies["ray-serve-cai-metrics"]["ingress"][0]["ports"]}
    service_ports = {p["port"] for p in r.one("Service", "ray-serve-cai-metrics")["spec"]["ports"]}
    assert metrics_ports == service_ports
    metrics_service = r.one("Service", "ray-serve-cai-metrics")
    for monitor in r.find("ServiceMonitor"):
        assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_service["metadata"]["labels"].items()
        assert {e["port"] for e in monitor["spec"]["endpoints"]} == {p["name"] for p in metrics_service["spec"]["ports"]}
    # every named targetPort of the metrics Service is declared by the containers meant to have it
    declared = {p["name"] for t in pod_templates(r).values() for c in t["spec"]["containers"] for p in c.get("ports", [])}
    assert {p["targetPort"] for p in metrics_service["spec"]["ports"]} <= declared
    # the only Ingress goes to the API Service (the dashboard stays internal by default)
    ingresses = {i["metadata"]["name"]: i["spec"]["rules"][0] for i in r.find("Ingress")}
    assert list(ingresses) == ["ray-serve-cai-api"]
    assert ingresses["ray-serve-cai-api"]["http"]["paths"][0]["backend"]["service"]["name"] == "ray-serve-cai-api"
    cluster_name = "kcl1." if env.startswith("kcl1-") else ""
    assert ingresses["ray-serve-cai-api"]["host"] == f"api.{namespace_of(env)}.{cluster_name}example.com"


def test_k8s_version_documented():
    assert f"Kubernetes {K8S_VERSION}" in (ROOT / "docs" / "kuberay.md").read_text()
