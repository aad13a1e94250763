"""Render an environment: ``kubectl kustomize k8s/overlays/<env>``, then check what came out.

The checks are the ones a cluster would only reveal after a deploy: serveConfigV2 is the serve-config
generator's current output for the environment (a stale overlay patch is replaced, with a warning),
the front door's port is a port that serve config actually opens on all interfaces, and the checks of
``checks.py`` (pod and replica ranges, disruption budgets, shared storage, body limit, TLS) hold.
Every object gets the label ``app.kubernetes.io/managed-by: ray-serve-cai``: ``apply`` prunes
labelled objects of the namespace that the manifests no longer contain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from launchers.kuberay.checks import check_all
from launchers.kuberay.environments import Layout
from launchers.kuberay.errors import KubeRayError
from launchers.kuberay.kubectl import Kubectl
from launchers.kuberay.rendered import (  # noqa: F401 - re-exported: the launcher's callers import them from here
    ALL_INTERFACES,
    API_SERVICE,
    APP_LABEL,
    MANAGED_BY,
    RAYSERVICE,
    Rendered,
    _secret_refs,
)
from launchers.kuberay.serve_config import environment_config, patched_value, serve_config_v2
from serve_apps.checks import listener_addresses


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
