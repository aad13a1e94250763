"""apply and delete an environment, with the checks that turn a half-applied cluster into one clear line.

``apply`` waits for the generation it wrote, not for the Ready condition alone (which an existing
RayService already has): until the operator has observed it, is Ready and runs no upgrade; then it
says what happened (created, upgraded to a new RayCluster, updated in place). It also prunes objects
of earlier applies that the manifests no longer contain (``prune.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from launchers.kuberay.errors import KubeRayError, KubeRayTimeout
from launchers.kuberay.kubectl import CRD_HINT, Kubectl
from launchers.kuberay.prune import prune
from launchers.kuberay.render import RAYSERVICE, Rendered
from launchers.kuberay.status import ServiceStatus, service_status
from launchers.polling import PollTimeout, poll_until

FIELD_MANAGER = "ray-serve-cai"
API_HINTS = {
    "ray.io/v1": ("RayService", CRD_HINT),
    "monitoring.coreos.com/v1": ("ServiceMonitor, PrometheusRule", "install the Prometheus operator's CRDs, or "
                                 "drop the ../../monitoring component from the overlay"),
}
Progress = Callable[[str], None]


def check_apis(kubectl: Kubectl, rendered: Rendered) -> None:
    served = kubectl.api_versions()
    for group_version in sorted(rendered.api_groups()):
        kinds, hint = API_HINTS.get(group_version, (group_version, "install it first"))
        if group_version not in served and group_version in API_HINTS:
            raise KubeRayError(f"the cluster does not serve {group_version} ({kinds}): {hint}")


def missing_secrets(kubectl: Kubectl, rendered: Rendered) -> list[str]:
    """Required Secrets (or keys) absent from the namespace. Only key names are read, never values."""
    missing = []
    for name, key in rendered.required_secrets():
        try:
            keys = kubectl.run(["get", "secret", name, "-n", rendered.namespace, "-o",
                                "go-template={{range $k, $v := .data}}{{$k}} {{end}}"]).split()
        except KubeRayError as exc:
            if "not found" not in str(exc).lower():
                raise
            missing.append(f"{name} (key {key})")
            continue
        if key not in keys:
            missing.append(f"{name} has no key {key}")
    return missing


def apply(kubectl: Kubectl, rendered: Rendered, *, wait: bool, timeout_s: float, poll_s: float = 5,
          progress: Progress = print) -> ServiceStatus | None:
    context = kubectl.check_context()
    progress(f"context {context}: applying environment {rendered.env} to namespace {rendered.namespace}")
    check_apis(kubectl, rendered)
    namespaces = [doc for doc in rendered.documents if doc["kind"] == "Namespace"]
    if namespaces:
        _server_side_apply(kubectl, Rendered(rendered.env, rendered.profile, namespaces), progress)
    missing = missing_secrets(kubectl, rendered)
    if missing:
        raise KubeRayError(f"namespace {rendered.namespace} lacks Secret {', '.join(missing)}: create them "
                           "(k8s/secrets/secrets.template.yaml shows how), then apply again")
    before = service_status(kubectl, rendered.namespace)
    _server_side_apply(kubectl, rendered, progress)
    prune(kubectl, rendered, progress)
    if not wait:
        return None
    generation = int(kubectl.json(["get", "rayservice", RAYSERVICE, "-n", rendered.namespace])["metadata"]["generation"])
    after = wait_ready(kubectl, rendered.namespace, generation=generation, timeout_s=timeout_s, poll_s=poll_s,
                       progress=progress)
    progress(outcome(before, after))
    return after


def outcome(before: ServiceStatus, after: ServiceStatus) -> str:
    """What the apply did to the running service, in one line."""
    where = f"rayservice {after.namespace}/{after.rayservice} generation {after.observed_generation}"
    if not before.exists or not before.raycluster:
        return f"{where}: created, serving on RayCluster {after.raycluster}"
    if before.raycluster != after.raycluster:
        return f"{where}: upgraded, traffic moved from RayCluster {before.raycluster} to {after.raycluster}"
    if before.generation == after.observed_generation:
        return f"{where}: unchanged, serving on RayCluster {after.raycluster}"
    return (f"{where}: updated in place on RayCluster {after.raycluster} (no new cluster: a serve-config change, or "
            "a cluster-spec change under upgradeStrategy None, which needs `k8s delete` + `k8s apply`)")


def _server_side_apply(kubectl: Kubectl, rendered: Rendered, progress: Progress) -> None:
    out = kubectl.run(["apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-"],
                      stdin=rendered.text(), timeout_s=300)
    for line in out.splitlines():
        if line.strip():
            progress(line.strip())


def wait_ready(kubectl: Kubectl, namespace: str, *, generation: int = 0, timeout_s: float, poll_s: float = 5,
               progress: Progress = print) -> ServiceStatus:
    """Poll until the operator has observed ``generation``, the RayService is Ready and no upgrade
    runs; print a line whenever the summary changes."""
    latest: list[ServiceStatus] = []

    def check() -> ServiceStatus | None:
        latest[:] = [service_status(kubectl, namespace)]
        return latest[0] if latest[0].settled(generation) else None

    try:
        ready = poll_until(check, timeout_s, poll_s, status=lambda elapsed: latest[0].line(), progress=progress,
                           every_s=60)
    except PollTimeout:
        status = latest[0]
        detail = f": {status.message}" if status.message else ""
        if status.upgrading and status.ready:
            detail += (f"; the upgrade did not finish, RayCluster {status.raycluster} still serves the previous "
                       "generation")
        raise KubeRayTimeout(f"not settled after {timeout_s:.0f} s ({status.line()}){detail}; "
                             f"`ray-serve-cai k8s status` and `kubectl -n {namespace} describe rayservice` tell more") from None
    progress(ready.line())
    return ready


def delete(kubectl: Kubectl, rendered: Rendered, progress: Progress = print) -> None:
    """Delete what apply created except the Namespace, which also holds the user's Secrets."""
    context = kubectl.check_context()
    progress(f"context {context}: deleting environment {rendered.env} from namespace {rendered.namespace} "
             "(the namespace and its Secrets stay)")
    kept = [doc for doc in rendered.documents if doc["kind"] != "Namespace"]
    out = kubectl.run(["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
                      stdin=Rendered(rendered.env, rendered.profile, kept).text(), timeout_s=300)
    for line in out.splitlines():
        if line.strip():
            progress(line.strip())
