"""`ray-serve-cai k8s apply|status|delete` end to end: the CLI, real kubectl, and a fake API server
(fake_apiserver.py) that validates every object like a real one and plays the KubeRay operator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import kubectl_binary
from fake_apiserver import FakeAPIServer

from launchers.local import free_port

SECRET_VALUE = "sk-router-key-never-printed-42"


def cli(tmp_path: Path, *args: str, kubeconfig: str | None = None, kubectl: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "kubeconfig")}
    env["KUBECTL"] = kubectl or kubectl_binary() or "kubectl"
    if kubeconfig is not None:
        (tmp_path / "kubeconfig").write_text(kubeconfig)
    return subprocess.run([sys.executable, "-m", "ray_serve_cai.cli", "k8s", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def add_secrets(api: FakeAPIServer, namespace: str, *extra: tuple[str, str]) -> None:
    api.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    for name, key in [("ray-serve-cai-router-keys", "api-keys"), ("ray-serve-cai-api-tls", "tls.crt"), *extra]:
        api.add({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                 "data": {key: "c2stcm91dGVyLWtleS1uZXZlci1wcmludGVkLTQy"}, "stringData": {}})


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeAPIServer]:
    with FakeAPIServer(ready_after_s=1.5) as server:
        (tmp_path / "kubeconfig").write_text(server.kubeconfig())
        yield server
        assert server.store.violations == []


def test_apply_waits_for_ready_then_status_and_delete(tmp_path, api):
    add_secrets(api, "ray-dev")
    done = cli(tmp_path, "apply", "--env", "dev", "--poll-interval", "0.3", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    progress = done.stderr.splitlines()
    assert progress[0] == "context fake: applying environment dev to namespace ray-dev"
    assert "rayservice.ray.io/ray-serve-cai serverside-applied" in progress
    waiting = [line for line in progress if line.startswith("rayservice ray-dev/ray-serve-cai:")]
    assert "not ready (Initializing); apps: router DEPLOYING; pods ready 0/3" in waiting[0]
    assert waiting[-1].endswith("ready; apps: router RUNNING; pods ready 3/3")
    assert progress[-1] == "rayservice ray-dev/ray-serve-cai generation 1: created, serving on RayCluster ray-serve-cai-abcde"
    status = json.loads(done.stdout)
    assert status["ready"] and status["applications"] == [{"name": "router", "status": "RUNNING", "message": ""}]
    assert sorted(p["component"] for p in status["pods"]) == ["engine", "head", "router"]
    # every rendered object reached the server, validated; serveConfigV2 is the generator's
    kinds = sorted(plural for plural, ns, _ in api.store.objects if ns == "ray-dev")
    assert kinds.count("networkpolicies") == 4 and "rayservices" in kinds and "servicemonitors" in kinds
    assert "persistentvolumeclaims" in kinds
    rayservice = api.store.objects[("rayservices", "ray-dev", "ray-serve-cai")]
    from launchers.kuberay.environments import Layout
    from launchers.kuberay.serve_config import serve_config_v2

    assert rayservice["spec"]["serveConfigV2"] == serve_config_v2(Layout().environment("dev"))

    status = cli(tmp_path, "status", "--env", "dev", "--check")
    assert status.returncode == 0 and json.loads(status.stdout)["raycluster"] == "ray-serve-cai-abcde"

    deleted = cli(tmp_path, "delete", "--env", "dev")
    assert deleted.returncode == 0, deleted.stderr
    assert "the namespace and its Secrets stay" in deleted.stderr
    left = sorted(plural for plural, ns, _ in api.store.objects if plural != "pods")
    assert left == ["namespaces", "secrets", "secrets"]
    gone = cli(tmp_path, "status", "--env", "dev", "--check")
    assert gone.returncode == 3 and "not found" in gone.stderr
    for run in (done, status, deleted, gone):
        assert SECRET_VALUE not in run.stdout + run.stderr


def test_apply_refuses_without_required_secrets(tmp_path, api):
    done = cli(tmp_path, "apply", "--env", "prod")
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error == ("ray-serve-cai: error: namespace ray-prod lacks Secret ray-serve-cai-redis (key password), "
                     "ray-serve-cai-router-keys (key api-keys), ray-serve-cai-api-tls (key tls.crt): create them "
                     "(k8s/secrets/secrets.template.yaml shows how), then apply again")
    assert ("rayservices", "ray-prod", "ray-serve-cai") not in api.store.objects  # nothing half-applied
    add_secrets(api, "ray-prod")  # still no Redis password
    again = cli(tmp_path, "apply", "--env", "prod", "--no-wait")
    assert again.returncode == 1 and "lacks Secret ray-serve-cai-redis (key password)" in again.stderr
    add_secrets(api, "ray-prod", ("ray-serve-cai-redis", "password"))
    ok = cli(tmp_path, "apply", "--env", "prod", "--no-wait")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == ""  # --no-wait: no status
    assert ("rayservices", "ray-prod", "ray-serve-cai") in api.store.objects


def test_apply_times_out_with_the_last_status(tmp_path):
    with FakeAPIServer(ready=False) as api:
        add_secrets(api, "ray-dev")
        done = cli(tmp_path, "apply", "--env", "dev", "--timeout", "2", "--poll-interval", "0.5",
                   kubeconfig=api.kubeconfig())
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ray-serve-cai: error: not settled after 2 s (rayservice ray-dev/ray-serve-cai: not ready "
                           "(Initializing); apps: router DEPLOYING; pods ready 0/3): the Ray cluster is starting")


def test_missing_kuberay_crds(tmp_path):
    with FakeAPIServer(crds={"monitoring.coreos.com/v1"}) as api:
        add_secrets(api, "ray-dev")
        done = cli(tmp_path, "apply", "--env", "dev", kubeconfig=api.kubeconfig())
        status = cli(tmp_path, "status", "--env", "dev")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ray-serve-cai: error: the cluster does not serve ray.io/v1 (RayService): install the KubeRay operator 1.7.0 "
        "(helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0 -n ray-system --create-namespace)")
    assert status.returncode == 1 and "no resource type rayservice: install the KubeRay operator 1.7.0" in status.stderr


def test_missing_prometheus_operator_crds(tmp_path):
    with FakeAPIServer(crds={"ray.io/v1"}) as api:
        done = cli(tmp_path, "apply", "--env", "staging", kubeconfig=api.kubeconfig())
    assert done.returncode == 1
    assert "the cluster does not serve monitoring.coreos.com/v1 (ServiceMonitor, PrometheusRule): install the " \
           "Prometheus operator's CRDs, or drop the ../../monitoring component from the overlay" in done.stderr


def test_server_rejects_an_invalid_object(tmp_path, api):
    """A mistake kustomize lets through is refused by the server's strict validation, in one line."""
    import shutil

    from kube_schemas import ROOT

    k8s = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", k8s)
    sizes = k8s / "overlays" / "dev" / "sizes.yaml"
    sizes.write_text(sizes.read_text() + "- {op: replace, path: /spec/rayClusterConfig/rayVersion, value: 2.6}\n")
    add_secrets(api, "ray-dev")
    done = cli(tmp_path, "apply", "--env", "dev", "--k8s-dir", str(k8s))
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("ray-serve-cai: error: ") and 'RayService "ray-serve-cai" is invalid' in error
    assert "spec.rayClusterConfig.rayVersion: 2.6 is not of type 'string'" in error


def test_unknown_context_missing_kubectl_and_unreachable_server(tmp_path, api):
    done = cli(tmp_path, "status", "--env", "dev", "--context", "prod-cluster")
    assert done.returncode == 1
    assert done.stderr.strip() == "ray-serve-cai: error: kubectl context 'prod-cluster' not found in your kubeconfig (known: fake)"
    missing = cli(tmp_path, "render", "--env", "dev", kubectl=str(tmp_path / "no-kubectl"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == (f"ray-serve-cai: error: kubectl not found at '{tmp_path / 'no-kubectl'}' "
                                      "(from --kubectl or $KUBECTL)")
    closed = api.kubeconfig().replace(api.url, f"http://127.0.0.1:{free_port()}")
    down = cli(tmp_path, "status", "--env", "dev", kubeconfig=closed)
    assert down.returncode == 1 and down.stderr.startswith("ray-serve-cai: error: cannot reach the Kubernetes API server")
    assert len(down.stderr.strip().splitlines()) == 1


def test_render_writes_manifests_without_a_cluster(tmp_path):
    out = tmp_path / "out" / "prod.yaml"
    done = cli(tmp_path, "render", "--env", "prod", "-o", str(out), kubeconfig="")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"wrote 17 objects of environment prod to {out}"
    import yaml

    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    assert len(docs) == 17 and docs[-1]["kind"] == "RayService"
    unknown = cli(tmp_path, "render", "--env", "qa")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == ("ray-serve-cai: error: unknown environment 'qa'; known: kcl1-dev, kcl1-staging, "
                                      "kcl1-prod, dev, staging, prod")


def test_stale_overlay_patch_is_replaced_with_a_warning(tmp_path):
    import shutil

    from kube_schemas import ROOT

    k8s = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", k8s)
    patch = k8s / "overlays" / "dev" / "serve-config.yaml"
    patch.write_text(patch.read_text().replace("num_replicas: 1", "num_replicas: 3", 1))
    done = cli(tmp_path, "render", "--env", "dev", "--k8s-dir", str(k8s))
    assert done.returncode == 0
    assert f"{patch} is stale: using profile 'dev' as generated now" in done.stderr
    import yaml

    from launchers.kuberay.environments import Layout
    from launchers.kuberay.serve_config import serve_config_v2

    rayservice = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "RayService"][0]
    assert rayservice["spec"]["serveConfigV2"] == serve_config_v2(Layout().environment("dev"))


def test_every_k8s_command_has_help(tmp_path):
    for command in ("render", "apply", "status", "delete"):
        done = cli(tmp_path, command, "--help")
        assert done.returncode == 0 and "--env" in done.stdout
