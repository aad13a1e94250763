"""Render an environment: ``kubectl kustomize k8s/overlays/<env>``, then check what came out.

The checks are the ones a cluster would only reveal after a deploy: serveConfigV2 is the serve-config
generator's current output for the environment (a stale overlay patch is replaced, with a warning),
the front door's port is a port that serve config actually opens on all interfaces, and the checks of
``checks.py`` (pod and replica ranges, disruption budgets, shared storage, body limit, TLS) hold.
Every object gets the label ``app.kubernetes.io/managed-by: ray-serve-cai``: ``apply`` prunes
labelled objects of the namespace that the manifests no longer contain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from launchers.kuberay.environments import Layout
from launchers.kuberay.errors import KubeRayError
from launchers.kuberay.kubectl import Kubectl
from launchers.kuberay.serve_config import environment_config, patched_value, serve_config_v2
from serve_apps.checks import listener_addresses

RAYSERVICE = "ray-serve-cai"
API_SERVICE = "ray-serve-cai-api"
# Pod labels of the Ray pods (k8s/base/rayservice.yaml); `status` lists pods by the first.
APP_LABEL = "app.kubernetes.io/name=ray-serve-cai"
ALL_INTERFACES = ("0.0.0.0", "::", "")
MANAGED_BY = ("app.kubernetes.io/managed-by", "ray-serve-cai")


@dataclass
class Rendered:
    env: str
    profile: str
    documents: list[dict[str, Any]]

    def text(self) -> str:
        return yaml.safe_dump_all(self.documents, sort_keys=False)

    def find(self, kind: str, name: str | None = None) -> Iterator[dict[str, Any]]:
        for doc in self.documents:
            if doc.get("kind") == kind and (name is None or doc["metadata"]["name"] == name):
                yield doc

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = list(self.find(kind, name))
        if len(found) != 1:
            raise KubeRayError(f"environment {self.env}: expected one {kind} {name}, found {len(found)}")
        return found[0]

    @property
    def rayservice(self) -> dict[str, Any]:
        return self.one("RayService", RAYSERVICE)

    @property
    def namespace(self) -> str:
        return self.rayservice["metadata"].get("namespace", "default")

    @property
    def serve_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.rayservice["spec"]["serveConfigV2"])

    @property
    def front_door_port(self) -> int:
        ports = self.one("Service", API_SERVICE)["spec"]["ports"]
        return int(next(p["targetPort"] for p in ports if p.get("name") == "http"))

    def api_groups(self) -> set[str]:
        return {doc["apiVersion"] for doc in self.documents if "/" in doc["apiVersion"]}

    def required_secrets(self) -> list[tuple[str, str]]:
        """(name, key) of every Secret a pod or the operator needs that is not marked optional."""
        needed: list[tuple[str, str]] = []
        for ref in _secret_refs(self.rayservice):
            if not ref.get("optional") and (ref["name"], ref["key"]) not in needed:
                needed.append((ref["name"], ref["key"]))
        for ingress in self.find("Ingress"):
            secret = ingress["metadata"].get("annotations", {}).get("nginx.ingress.kubernetes.io/auth-secret")
            if secret and (secret, "auth") not in needed:
                needed.append((secret, "auth"))
            for tls in ingress["spec"].get("tls") or []:
                if tls.get("secretName") and (tls["secretName"], "tls.crt") not in needed:
                    needed.append((tls["secretName"], "tls.crt"))
        return needed


def _secret_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        ref = node.get("secretKeyRef")
        if isinstance(ref, dict) and "name" in ref and "key" in ref:
            yield ref
        for value in node.values():
            yield from _secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _secret_refs(value)


def open_ports(serve_config: dict[str, Any]) -> dict[int, str]:
    """Port -> bind host of every door the serve config opens: Serve's proxy and router listeners."""
    http = serve_config.get("http_options") or {}
    ports = {int(http.get("port", 8000)): str(http.get("host", "127.0.0.1"))}
    ports.update({port: host for _, host, port in listener_addresses(serve_config)})
    return ports


def check_front_door(rendered: Rendered) -> None:
    port, doors = rendered.front_door_port, open_ports(rendered.serve_config)
    where = f"environment {rendered.env}: the front door (front-door.yaml) is port {port}"
    if port not in doors:
        raise KubeRayError(f"{where}, but profile {rendered.profile!r} opens only {sorted(doors)}")
    if doors[port] not in ALL_INTERFACES:
        raise KubeRayError(f"{where}, but profile {rendered.profile!r} binds it to {doors[port]}: "
                           "pods need 0.0.0.0 for the probe and the Service to reach it")


def render(layout: Layout, kubectl: Kubectl, env: str, warn: Callable[[str], None] = lambda line: None) -> Rendered:
    from launchers.kuberay.checks import check_all

    environment = layout.environment(env)
    overlay = layout.overlay(env)
    documents = [doc for doc in yaml.safe_load_all(kubectl.kustomize(overlay)) if doc]
    for doc in documents:
        doc["metadata"].setdefault("labels", {})[MANAGED_BY[0]] = MANAGED_BY[1]
    rendered = Rendered(env, environment.profile, documents)
    fresh = serve_config_v2(environment)
    spec = rendered.rayservice["spec"]
    if yaml.safe_load(spec.get("serveConfigV2") or "{}") != environment_config(environment):
        patch = layout.serve_config_patch(env)
        stale = patch.is_file() and patched_value(patch.read_text()) != fresh
        warn(f"{patch} is {'stale' if stale else 'not applied'}: using profile {environment.profile!r} as generated "
             f"now (regenerate with `python -m launchers.kuberay.serve_config {env}`)")
        spec["serveConfigV2"] = fresh
    check_front_door(rendered)
    check_all(rendered)
    return rendered
