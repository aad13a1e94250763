"""A Kubernetes API server stand-in for real ``kubectl`` (no API server can run on this machine).

It serves what kubectl uses for this launcher and enforces the real contract where it matters:
discovery (only the installed API groups: leave out ``ray.io`` to play "KubeRay CRDs missing"),
OpenAPI v3 that advertises server-side field validation, server-side apply with
``fieldValidation=Strict`` (every object is schema-checked like a real server: built-in kinds with
kubernetes-validate, custom resources against the vendored CRDs; 422 otherwise), namespaces that
must exist, NotFound, label selectors, delete.

``Operator`` stands in for the KubeRay operator: for an applied RayService it creates the pods of its
groups and, after ``ready_after_s``, marks them and the RayService ready with one status entry per
Serve application of serveConfigV2. A later generation is observed only after ``observe_lag_s`` (the
RayService stays Ready meanwhile, as a real one does). When it changes ``rayClusterConfig`` under
upgradeStrategy NewCluster, the operator plays an upgrade: ``UpgradeInProgress`` with a pending
RayCluster whose apps deploy for ``upgrade_s`` (forever with ``upgrade_ok=False``), then the switch.
Its status objects are checked against the CRD's status schema.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml
from kube_schemas import problems


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


BUILTIN = [
    Resource("", "v1", "Namespace", "namespaces", namespaced=False),
    Resource("", "v1", "Service", "services"), Resource("", "v1", "Secret", "secrets"),
    Resource("", "v1", "ConfigMap", "configmaps"), Resource("", "v1", "Pod", "pods"),
    Resource("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    Resource("networking.k8s.io", "v1", "Ingress", "ingresses"),
    Resource("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
    Resource("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets"),
]
CRDS = {
    "ray.io/v1": [Resource("ray.io", "v1", "RayService", "rayservices")],
    "monitoring.coreos.com/v1": [Resource("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
                                 Resource("monitoring.coreos.com", "v1", "PrometheusRule", "prometheusrules")],
}


class APIError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Store:
    crds: set[str]
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (plural, ns, name)
    requests: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def resources(self) -> list[Resource]:
        return BUILTIN + [r for gv in sorted(self.crds) for r in CRDS[gv]]

    def put(self, resource: Resource, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        with self.lock:
            if resource.namespaced and ("namespaces", "", namespace) not in self.objects:
                raise APIError(404, "NotFound", f'namespaces "{namespace}" not found')
            key = (resource.plural, namespace if resource.namespaced else "", name)
            old = self.objects.get(key)
            meta = obj.setdefault("metadata", {})
            if resource.namespaced:
                meta["namespace"] = namespace
            meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"] if old else _now()
            meta["resourceVersion"] = str(time.monotonic_ns())
            meta["generation"] = (old["metadata"].get("generation", 0) + 1) if old else 1
            if old and "status" in old:
                obj["status"] = old["status"]  # apply never writes status
            self.objects[key] = obj
            return obj


class Operator:
    """What the KubeRay operator would do for a RayService, enough for apply/status to observe."""

    def __init__(self, store: Store, ready_after_s: float = 1.0, ready: bool = True, observe_lag_s: float = 0.5,
                 upgrade_s: float = 1.0, upgrade_ok: bool = True) -> None:
        self.store, self.ready_after_s, self.ready = store, ready_after_s, ready
        self.observe_lag_s, self.upgrade_s, self.upgrade_ok = observe_lag_s, upgrade_s, upgrade_ok
        self.state: dict[str, dict[str, Any]] = {}

    def read(self, namespace: str, name: str) -> None:
        """A client read this RayService's status (see ``_reconcile``)."""
        state = self.state.get(f"{namespace}/{name}")
        if state is not None and "reads" in state:
            state["reads"] += 1

    def reconcile(self) -> None:
        with self.store.lock:
            for (plural, namespace, name), service in list(self.store.objects.items()):
                if plural == "rayservices":
                    self._reconcile(namespace, name, service)

    def _reconcile(self, namespace: str, name: str, service: dict[str, Any]) -> None:
        now, generation = time.monotonic(), service["metadata"]["generation"]
        key = f"{namespace}/{name}"
        state = self.state.get(key)
        if state is None:  # first seen: build the first cluster
            state = self.state[key] = {"first": now, "observed": generation, "changed": now, "active": f"{name}-abcde",
                                       "clusters": 1, "cluster_spec": service["spec"]["rayClusterConfig"],
                                       "pending": None}
        if generation != state["observed"] and state.get("seen_gen") != generation:
            state["seen_gen"], state["changed"], state["reads"] = generation, now, 0
        # observed after the lag AND after one read of the old status: on a loaded machine kubectl's own
        # requests can outlast the lag, and a client must be able to see "not yet observed" at least once
        if generation != state["observed"] and now - state["changed"] >= self.observe_lag_s and state["reads"] > 0:
            state["observed"] = generation
            new_spec = service["spec"]["rayClusterConfig"]
            strategy = (service["spec"].get("upgradeStrategy") or {}).get("type", "NewCluster")
            if new_spec != state["cluster_spec"] and strategy == "NewCluster":
                state["clusters"] += 1
                state["pending"] = {"name": f"{name}-{state['clusters']}", "since": now, "spec": new_spec}
        up = self.ready and now - state["first"] >= self.ready_after_s
        pending = state["pending"]
        if pending and self.upgrade_ok and now - pending["since"] >= self.upgrade_s:
            self._delete_pods(namespace, state["active"])
            state["active"], state["cluster_spec"], state["pending"] = pending["name"], pending["spec"], None
            pending = None
        self._pods(namespace, state["active"], state["cluster_spec"], up)
        if pending:
            self._pods(namespace, pending["name"], pending["spec"], False)
        apps = [app["name"] for app in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]]
        conditions = [{"type": "Ready", "status": "True" if up else "False", "lastTransitionTime": _now(),
                       "reason": "NonZeroServeEndpoints" if up else "Initializing",
                       "message": "" if up else "the Ray cluster is starting"}]
        if pending:
            conditions.append({"type": "UpgradeInProgress", "status": "True", "lastTransitionTime": _now(),
                               "reason": "BothActivePendingClustersExist", "message": "the pending cluster is starting"})
        service["status"] = {
            "conditions": conditions, "observedGeneration": state["observed"],
            "numServeEndpoints": 1 if up else 0,
            "activeServiceStatus": {
                "rayClusterName": state["active"],
                "applicationStatuses": {app: {"status": "RUNNING"} for app in apps},
            } if up else {},
            "pendingServiceStatus": {
                "rayClusterName": pending["name"] if pending else state["active"],
                "applicationStatuses": {app: {"status": "DEPLOYING"} for app in apps},
            } if pending or not up else {},
        }
        errors = problems(service)
        if errors:
            self.store.violations.append(f"operator status outside the CRD: {errors}")

    def _delete_pods(self, namespace: str, cluster_name: str) -> None:
        for key in [k for k in self.store.objects if k[0] == "pods" and k[1] == namespace
                    and self.store.objects[k]["metadata"]["labels"].get("ray.io/cluster") == cluster_name]:
            del self.store.objects[key]

    def _pods(self, namespace: str, cluster_name: str, spec: dict[str, Any], up: bool) -> None:
        groups = [("head", spec["headGroupSpec"], 1)] + [(g["groupName"], g, g.get("replicas", 1)) for g in spec["workerGroupSpecs"]]
        for group, group_spec, replicas in groups:
            for index in range(replicas):
                pod_name = f"{cluster_name}-{group}-{index}"
                labels = {**group_spec["template"]["metadata"].get("labels", {}), "ray.io/cluster": cluster_name,
                          "ray.io/group": group}
                self.store.objects[("pods", namespace, pod_name)] = {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod_name, "namespace": namespace, "labels": labels},
                    "status": {"phase": "Running" if up else "Pending",
                               "conditions": [{"type": "Ready", "status": "True" if up else "False"}],
                               "containerStatuses": [{"name": "ray", "restartCount": 0}]},
                }


class Handler(BaseHTTPRequestHandler):
    server: FakeAPIServer

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        store = self.server.store
        store.requests.append(f"{self.command} {url.path}")
        try:
            self._send(200, self._route(url.path, query, body))
        except APIError as exc:
            self._send(exc.code, exc.status())

    do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _handle

    def _route(self, path: str, query: dict[str, str], body: bytes) -> Any:
        store = self.server.store
        parts = [p for p in path.split("/") if p]
        if path == "/version":
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups: dict[str, list[str]] = {}
            for r in store.resources():
                if r.group:
                    groups.setdefault(r.group, [])
                    if r.version not in groups[r.group]:
                        groups[r.group].append(r.version)
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]}
        if parts[:2] == ["openapi", "v3"]:
            return self._openapi(parts[2:])
        group_version, rest = ("v1", parts[2:]) if parts[:2] == ["api", "v1"] else \
            (f"{parts[1]}/{parts[2]}" if len(parts) >= 3 and parts[0] == "apis" else "", parts[3:])
        resources = [r for r in store.resources() if r.group_version == group_version]
        if not resources:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": [
                {"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced, "kind": r.kind,
                 "verbs": ["create", "delete", "get", "list", "patch", "update"]} for r in resources]}
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        resource = next((r for r in resources if r.plural == rest[0]), None)
        if resource is None:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        self.server.operator.reconcile()
        if self.command == "GET" and not name:
            return self._list(resource, namespace, query.get("labelSelector", ""))
        key = (resource.plural, namespace, name)
        if self.command == "GET":
            with store.lock:
                if key not in store.objects:
                    raise APIError(404, "NotFound", f'{resource.plural}.{resource.group or "core"} "{name}" not found'
                                   .replace(".core", ""))
                if resource.plural == "rayservices":
                    self.server.operator.read(namespace, name)
                return store.objects[key]
        if self.command == "DELETE":
            with store.lock:
                if store.objects.pop(key, None) is None:
                    raise APIError(404, "NotFound", f'{resource.plural} "{name}" not found')
            return {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name, "kind": resource.plural}}
        if self.command == "PATCH" and self.headers.get("Content-Type", "").startswith("application/apply-patch"):
            if query.get("fieldValidation") != "Strict":
                store.violations.append(f"apply without fieldValidation=Strict: {query}")
            obj = yaml.safe_load(body)
            if obj.get("kind") != resource.kind or obj.get("metadata", {}).get("name") != name:
                raise APIError(400, "BadRequest", "the body does not match the URL")
            errors = problems(obj)
            if errors:
                raise APIError(422, "Invalid", f'{resource.kind} "{name}" is invalid: {"; ".join(errors)}')
            return store.put(resource, namespace, obj)
        raise APIError(405, "MethodNotAllowed", f"{self.command} is not supported by this fake")

    def _list(self, resource: Resource, namespace: str, selector: str) -> dict[str, Any]:
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
        with self.server.store.lock:
            items = [obj for (plural, ns, _), obj in self.server.store.objects.items()
                     if plural == resource.plural and (not namespace or ns == namespace)
                     and wanted.items() <= obj["metadata"].get("labels", {}).items()]
        return {"kind": f"{resource.kind}List", "apiVersion": resource.group_version,
                "metadata": {"resourceVersion": "1"}, "items": items}

    def _openapi(self, rest: list[str]) -> dict[str, Any]:
        """Advertise server-side field validation (PATCH takes ``fieldValidation``) for every kind, so
        kubectl leaves validation to this server, as it does with a real one."""
        store = self.server.store
        versions = sorted({r.group_version for r in store.resources()})
        prefix = lambda gv: f"api/{gv}" if "/" not in gv else f"apis/{gv}"  # noqa: E731
        if not rest:
            return {"paths": {prefix(gv): {"serverRelativeURL": f"/openapi/v3/{prefix(gv)}?hash=1"} for gv in versions}}
        group_version = "/".join(rest[1:])
        paths = {}
        for r in store.resources():
            if r.group_version != group_version:
                continue
            scope = "/namespaces/{namespace}" if r.namespaced else ""
            paths[f"/{prefix(group_version)}{scope}/{r.plural}/{{name}}"] = {"patch": {
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}}}}
        if not paths:
            raise APIError(404, "NotFound", "not found")
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths}


class FakeAPIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, crds: set[str] | None = None, ready_after_s: float = 1.0, ready: bool = True,
                 **operator: Any) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.store = Store(crds=set(CRDS) if crds is None else crds)
        self.operator = Operator(self.store, ready_after_s, ready, **operator)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def kubeconfig(self, context: str = "fake") -> str:
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],  # plain HTTP: kubectl sends no credentials
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake"}}],
        })

    def add(self, obj: dict[str, Any]) -> None:
        """Create an object directly (what a user does with `kubectl create secret`)."""
        resource = next(r for r in self.store.resources() if r.kind == obj["kind"])
        self.store.put(resource, obj["metadata"].get("namespace", ""), obj)

    def __enter__(self) -> FakeAPIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
