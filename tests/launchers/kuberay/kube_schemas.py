"""Offline validation of Kubernetes objects, as an API server with strict field validation would do:
built-in kinds with kubernetes-validate, custom resources with jsonschema against the CRDs vendored in
k8s/schemas (their ``v1`` openAPIV3Schema; ``x-kubernetes-*`` keys are annotations to jsonschema)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = ROOT / "k8s" / "schemas"
K8S_VERSION = "1.32"  # the oldest Kubernetes docs/kuberay.md supports
CRD_FILES = {
    ("ray.io/v1", "RayService"): "ray.io_rayservices.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((SCHEMAS / CRD_FILES[(api_version, kind)]).read_text())
    version = api_version.split("/")[1]
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    return _strict(schema)


def _strict(schema: Any) -> Any:
    """A structural CRD schema prunes unknown fields; with strict validation they are errors instead."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def problems(obj: dict[str, Any], k8s_version: str = K8S_VERSION) -> list[str]:
    """Every schema violation of ``obj`` (empty when valid)."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_FILES:
        body = {k: v for k, v in obj.items() if k != "metadata"}  # metadata is ObjectMeta, checked below
        errors = [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                  for e in jsonschema.Draft7Validator(crd_schema(*key)).iter_errors(body)]
        meta = obj.get("metadata") or {}
        if not meta.get("name"):
            errors.append("metadata.name: required")
        return errors
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path)) or '(root)'}: {exc.message}"]
    return []
