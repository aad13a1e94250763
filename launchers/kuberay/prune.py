"""Prune: delete what an earlier ``apply`` created that the manifests no longer contain.

Candidates are the namespace's objects of the kinds ``render`` can produce that carry the label
``app.kubernetes.io/managed-by: ray-serve-cai`` (``render`` sets it on every object). Objects with an
owner (the Services and RayClusters KubeRay creates) are never touched, nor are Namespaces and
Secrets. PersistentVolumeClaims hold data: they are reported, not deleted.
"""

from __future__ import annotations

from collections.abc import Callable

from launchers.kuberay.kubectl import Kubectl
from launchers.kuberay.render import MANAGED_BY, Rendered

# kubectl resource names of every kind the overlays render (Namespace aside), by API group/version.
PRUNABLE = {
    "v1": ["services", "configmaps", "persistentvolumeclaims"],
    "networking.k8s.io/v1": ["ingresses.networking.k8s.io", "networkpolicies.networking.k8s.io"],
    "policy/v1": ["poddisruptionbudgets.policy"],
    "ray.io/v1": ["rayservices.ray.io"],
    "monitoring.coreos.com/v1": ["servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"],
}
KEPT_KINDS = {"PersistentVolumeClaim"}


def stale_objects(kubectl: Kubectl, rendered: Rendered) -> list[tuple[str, str]]:
    """(kind, name) of labelled objects in the namespace that the manifests no longer contain."""
    served = kubectl.api_versions() | {"v1"}
    resources = [r for version, names in PRUNABLE.items() if version in served for r in names]
    listed = kubectl.json(["get", ",".join(resources), "-n", rendered.namespace, "-l", "=".join(MANAGED_BY)])
    wanted = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered.documents}
    stale = []
    for item in listed.get("items", []):
        meta = item["metadata"]
        if meta.get("ownerReferences") or (item["kind"], meta["name"]) in wanted:
            continue
        stale.append((item["kind"], meta["name"]))
    return sorted(stale)


def prune(kubectl: Kubectl, rendered: Rendered, progress: Callable[[str], None]) -> list[tuple[str, str]]:
    """Delete the stale objects (PVCs only reported); returns what was deleted."""
    deleted = []
    for kind, name in stale_objects(kubectl, rendered):
        if kind in KEPT_KINDS:
            progress(f"kept {kind} {rendered.namespace}/{name}: no longer in the manifests, but it holds data "
                     f"(kubectl -n {rendered.namespace} delete pvc {name} once you no longer need it)")
            continue
        kubectl.run(["delete", kind.lower(), name, "-n", rendered.namespace, "--ignore-not-found", "--wait=false"])
        progress(f"pruned {kind} {rendered.namespace}/{name}: no longer in the manifests")
        deleted.append((kind, name))
    return deleted
