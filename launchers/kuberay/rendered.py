"""A rendered environment: its manifests and what the launcher reads from them (the RayService, its
serve config, the front door's port, the Secrets it needs). Its own module so that ``render`` (which
makes one) and ``checks`` (which inspect one) both depend on it, not on each other."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from launchers.kuberay.errors import KubeRayError

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
