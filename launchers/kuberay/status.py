"""What is running: the RayService's readiness and Serve apps, and the Ray pods, as one typed summary."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from launchers.kuberay.errors import KubeRayError
from launchers.kuberay.kubectl import Kubectl
from launchers.kuberay.render import APP_LABEL, RAYSERVICE


class AppStatus(BaseModel):
    name: str
    status: str
    message: str = ""


class PodStatus(BaseModel):
    name: str
    component: str
    phase: str
    ready: bool
    restarts: int


class ServiceStatus(BaseModel):
    namespace: str
    rayservice: str
    exists: bool
    ready: bool = False
    reason: str = ""
    message: str = ""
    raycluster: str = ""
    generation: int = 0
    observed_generation: int = 0
    upgrading: bool = False
    pending_raycluster: str = ""
    applications: list[AppStatus] = []
    pending_applications: list[AppStatus] = []
    pods: list[PodStatus] = []

    def settled(self, generation: int) -> bool:
        """The operator has seen ``generation`` and finished acting on it: Ready, no upgrade running."""
        return self.exists and self.observed_generation >= generation and self.ready and not self.upgrading

    def line(self) -> str:
        """One progress line: readiness, Serve apps, an upgrade under way, pods ready/total."""
        if not self.exists:
            return f"rayservice {self.namespace}/{self.rayservice}: not found"
        apps = ", ".join(f"{a.name} {a.status}" for a in self.applications) or "no serve apps yet"
        ready_pods = sum(p.ready for p in self.pods)
        state = "ready" if self.ready else f"not ready ({self.reason or 'pending'})"
        if self.observed_generation < self.generation:
            state += f", generation {self.generation} not yet observed"
        if self.upgrading:
            pending = ", ".join(f"{a.name} {a.status}" for a in self.pending_applications) or "no serve apps yet"
            state += f", upgrading to {self.pending_raycluster or 'a new cluster'} (apps: {pending})"
        return f"rayservice {self.namespace}/{self.rayservice}: {state}; apps: {apps}; pods ready {ready_pods}/{len(self.pods)}"


def _ready(status: dict[str, Any]) -> tuple[bool, str, str]:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True", condition.get("reason", ""), condition.get("message", "")
    # Before KubeRay 1.3 there were no conditions, only serviceStatus.
    return status.get("serviceStatus") == "Running", status.get("serviceStatus", ""), ""


def _condition(status: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in status.get("conditions") or [])


def _apps(status: dict[str, Any], which: str = "active") -> list[AppStatus]:
    statuses = (status.get(f"{which}ServiceStatus") or {}).get("applicationStatuses") or {}
    if not statuses and which == "active":
        statuses = (status.get("pendingServiceStatus") or {}).get("applicationStatuses") or {}
    return [AppStatus(name=name, status=str(app.get("status", "")), message=str(app.get("message", ""))[:300])
            for name, app in sorted(statuses.items())]


def _pod(pod: dict[str, Any]) -> PodStatus:
    containers = (pod.get("status") or {}).get("containerStatuses") or []
    conditions = (pod.get("status") or {}).get("conditions") or []
    return PodStatus(
        name=pod["metadata"]["name"],
        component=pod["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""),
        phase=(pod.get("status") or {}).get("phase", "Unknown"),
        ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        restarts=sum(int(c.get("restartCount", 0)) for c in containers),
    )


def service_status(kubectl: Kubectl, namespace: str, name: str = RAYSERVICE) -> ServiceStatus:
    try:
        service = kubectl.json(["get", "rayservice", name, "-n", namespace])
    except KubeRayError as exc:
        if "not found" not in str(exc).lower():
            raise
        return ServiceStatus(namespace=namespace, rayservice=name, exists=False)
    status = service.get("status") or {}
    ready, reason, message = _ready(status)
    pods = kubectl.json(["get", "pods", "-n", namespace, "-l", APP_LABEL]).get("items", [])
    upgrading = _condition(status, "UpgradeInProgress")
    return ServiceStatus(
        namespace=namespace, rayservice=name, exists=True, ready=ready, reason=reason, message=message[:300],
        raycluster=str((status.get("activeServiceStatus") or {}).get("rayClusterName", "")),
        generation=int(service["metadata"].get("generation", 0)),
        observed_generation=int(status.get("observedGeneration", 0)),
        upgrading=upgrading,
        pending_raycluster=str((status.get("pendingServiceStatus") or {}).get("rayClusterName", "")) if upgrading else "",
        applications=_apps(status), pending_applications=_apps(status, "pending") if upgrading else [],
        pods=sorted((_pod(p) for p in pods), key=lambda p: (p.component, p.name)),
    )
