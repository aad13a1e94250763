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
    applications: list[AppStatus] = []
    pods: list[PodStatus] = []

    def line(self) -> str:
        """One progress line: readiness, Serve apps, pods ready/total."""
        if not self.exists:
            return f"rayservice {self.namespace}/{self.rayservice}: not found"
        apps = ", ".join(f"{a.name} {a.status}" for a in self.applications) or "no serve apps yet"
        ready_pods = sum(p.ready for p in self.pods)
        state = "ready" if self.ready else f"not ready ({self.reason or 'pending'})"
        return f"rayservice {self.namespace}/{self.rayservice}: {state}; apps: {apps}; pods ready {ready_pods}/{len(self.pods)}"


def _ready(status: dict[str, Any]) -> tuple[bool, str, str]:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True", condition.get("reason", ""), condition.get("message", "")
    # Before KubeRay 1.3 there were no conditions, only serviceStatus.
    return status.get("serviceStatus") == "Running", status.get("serviceStatus", ""), ""


def _apps(status: dict[str, Any]) -> list[AppStatus]:
    statuses = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    if not statuses:
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
    return ServiceStatus(
        namespace=namespace, rayservice=name, exists=True, ready=ready, reason=reason, message=message[:300],
        raycluster=str((status.get("activeServiceStatus") or {}).get("rayClusterName", "")),
        applications=_apps(status), pods=sorted((_pod(p) for p in pods), key=lambda p: (p.component, p.name)),
    )
