"""Checks of a rendered environment that only a running cluster would otherwise reveal.

Each raises :class:`KubeRayError` with one line naming the object and the setting to change:
pod ranges that do not fit the serve config's replica ranges, disruption budgets that block drains,
batch storage that is not shared, an ingress body limit below the upload limit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from launchers.kuberay.errors import KubeRayError
from serve_apps.checks import parse_router_args
from serve_apps.profiles import ROUTER_IMPORT_PATH

if TYPE_CHECKING:
    from launchers.kuberay.rendered import Rendered

BODY_SIZE = "nginx.ingress.kubernetes.io/proxy-body-size"
MULTIPART_MARGIN = 1024 * 1024  # multipart framing and form fields around an uploaded file
_NGINX_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _router_apps(serve_config: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for app in serve_config.get("applications") or []:
        if app.get("import_path") == ROUTER_IMPORT_PATH:
            yield app["name"], parse_router_args(app.get("args") or {})


def demand(serve_config: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """(least, most) CPUs and GPUs the serve config's replicas ask for."""
    cpu, gpu = [0.0, 0.0], [0.0, 0.0]
    for _, args in _router_apps(serve_config):
        for i in (0, 1):
            cpu[i] += args.router.num_replicas * args.router.num_cpus
            if args.matrix is not None:
                cpu[i] += args.matrix.num_replicas * args.matrix.num_cpus
        for engine in args.engines if not args.router.colocate else []:
            scaling = engine.autoscaling
            counts = (scaling.min_replicas, scaling.max_replicas) if scaling else (engine.num_replicas,) * 2
            gpus = engine.tensor_parallel_size if engine.device == "gpu" else 0
            for i in (0, 1):
                cpu[i] += counts[i] * engine.num_cpus
                gpu[i] += counts[i] * gpus
    return {"CPU": (cpu[0], cpu[1]), "GPU": (gpu[0], gpu[1])}


def _group_resource(group: dict[str, Any]) -> tuple[str, float]:
    params = group.get("rayStartParams") or {}
    gpus = float(params.get("num-gpus", "0"))
    return ("GPU", gpus) if gpus else ("CPU", float(params.get("num-cpus", "1")))


def check_pod_ranges(rendered: Rendered) -> None:
    """Every worker group's minReplicas/maxReplicas hold exactly the pods its replicas need, at the
    fewest and the most replicas: no replica left unplaceable, no pod that nothing would ever use."""
    groups = rendered.rayservice["spec"]["rayClusterConfig"].get("workerGroupSpecs") or []
    wanted = demand(rendered.serve_config)
    by_resource: dict[str, list[dict[str, Any]]] = {}
    for group in groups:
        by_resource.setdefault(_group_resource(group)[0], []).append(group)
    for resource, (least, most) in wanted.items():
        found = by_resource.get(resource, [])
        if not found:
            if most:
                raise KubeRayError(f"environment {rendered.env}: profile {rendered.profile!r} asks for {most:g} "
                                   f"{resource} but no worker group offers {resource}")
            continue
        if len(found) > 1:
            raise KubeRayError(f"environment {rendered.env}: several worker groups offer {resource}: "
                               f"{', '.join(g['groupName'] for g in found)}")
        group = found[0]
        counts = [group.get(key, 0) for key in ("minReplicas", "maxReplicas", "replicas")]
        if not all(isinstance(count, int) for count in counts):
            raise KubeRayError(f"environment {rendered.env}: worker group {group['groupName']}: minReplicas, "
                               f"maxReplicas and replicas must be integers, not {counts}")
        per_pod = _group_resource(group)[1]
        need = (math.ceil(least / per_pod), math.ceil(most / per_pod))
        have = (group.get("minReplicas", 0), group.get("maxReplicas", 0))
        if have != need:
            raise KubeRayError(
                f"environment {rendered.env}: worker group {group['groupName']} has {have[0]}-{have[1]} pods of "
                f"{per_pod:g} {resource}, but profile {rendered.profile!r} asks for {least:g}-{most:g} {resource} "
                f"({need[0]}-{need[1]} pods): set minReplicas/maxReplicas in the overlay's sizes.yaml, or the "
                "replica counts in the profile")
        if not have[0] <= group.get("replicas", have[0]) <= have[1]:
            raise KubeRayError(f"environment {rendered.env}: worker group {group['groupName']}: replicas "
                               f"{group['replicas']} outside {have[0]}-{have[1]}")


def check_disruption_budgets(rendered: Rendered) -> None:
    """Integer minAvailable below the group's pod count: Ray pods belong to a RayCluster, which has
    no scale subresource, so maxUnavailable or a percentage would allow no eviction at all."""
    cluster = rendered.rayservice["spec"]["rayClusterConfig"]
    for pdb in rendered.find("PodDisruptionBudget"):
        name, spec = pdb["metadata"]["name"], pdb["spec"]
        where = f"environment {rendered.env}: PodDisruptionBudget {name}"
        if "maxUnavailable" in spec or not isinstance(spec.get("minAvailable"), int):
            raise KubeRayError(f"{where}: use an integer minAvailable (KubeRay's pods have no scale subresource: "
                               "maxUnavailable or a percentage blocks every eviction and node drains hang)")
        selector = spec["selector"]["matchLabels"]
        matched = [g for g in cluster.get("workerGroupSpecs") or []
                   if selector.items() <= g["template"]["metadata"].get("labels", {}).items()]
        if len(matched) != 1:
            raise KubeRayError(f"{where}: selects {len(matched)} worker groups, expected one")
        pods = matched[0].get("minReplicas", 0)
        if spec["minAvailable"] > max(pods - 1, 0):
            raise KubeRayError(f"{where}: minAvailable {spec['minAvailable']} leaves no eviction for group "
                               f"{matched[0]['groupName']} of {pods} pods (use {max(pods - 1, 0)})")


def _templates(rendered: Rendered) -> dict[str, dict[str, Any]]:
    cluster = rendered.rayservice["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g["template"] for g in cluster.get("workerGroupSpecs") or []}
    return {"head": cluster["headGroupSpec"]["template"], **groups}


def _shared_claim(rendered: Rendered, template: dict[str, Any], path: str) -> str | None:
    """The ReadWriteMany claim mounted over ``path`` in the pod's Ray container, if any."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
    container = template["spec"]["containers"][0]
    for mount in container.get("volumeMounts") or []:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if (path + "/").startswith(prefix):
            claim = (volumes.get(mount["name"]) or {}).get("persistentVolumeClaim", {}).get("claimName")
            pvcs = [p for p in rendered.find("PersistentVolumeClaim", claim)] if claim else []
            if pvcs and "ReadWriteMany" in pvcs[0]["spec"].get("accessModes", []):
                return str(claim)
    return None


def check_shared_storage(rendered: Rendered) -> None:
    """Batch storage and the Matrix bot's store are shared: an object store URI, or a path on a
    ReadWriteMany volume that every Ray pod mounts (job actors ask for no CPU and land anywhere)."""
    for app, args in _router_apps(rendered.serve_config):
        paths = {"batch.storage": args.batch.storage if args.batch.enabled else None,
                 "matrix.store_path": str(args.matrix.store_path) if args.matrix else None}
        for key, path in paths.items():
            if path is None or ("://" in path and not path.startswith("file://")):
                continue
            path = path.removeprefix("file://")
            for pod, template in _templates(rendered).items():
                if _shared_claim(rendered, template, path) is None:
                    raise KubeRayError(
                        f"environment {rendered.env}: app {app} {key} is {path!r}, but the {pod} pods do not "
                        "mount a ReadWriteMany volume there: each pod would keep its own files. Mount the shared "
                        "volume (component shared-storage) or use s3://")


def _nginx_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)", str(value).strip().lower())
    if not match:
        raise KubeRayError(f"proxy-body-size {value!r} is not an nginx size (e.g. 256m)")
    return int(match.group(1)) * _NGINX_UNITS[match.group(2)]


def check_body_limit(rendered: Rendered) -> None:
    """The API Ingress lets through the largest body the router accepts (a batch input upload)."""
    needed = 0
    for _, args in _router_apps(rendered.serve_config):
        if args.batch.enabled:
            needed = max(needed, args.batch.max_file_bytes + MULTIPART_MARGIN, args.batch.endpoint_max_bytes)
    for ingress in rendered.find("Ingress"):
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        if backend != "ray-serve-cai-api" or not needed:
            continue
        value = ingress["metadata"].get("annotations", {}).get(BODY_SIZE, "1m")  # ingress-nginx's default
        if _nginx_bytes(value) < needed:
            raise KubeRayError(f"environment {rendered.env}: Ingress {ingress['metadata']['name']} {BODY_SIZE} "
                               f"{value} is below the router's upload limit ({needed} bytes with framing: "
                               "batch.max_file_bytes): uploads would fail with nginx's 413")


def check_tls(rendered: Rendered) -> None:
    for ingress in rendered.find("Ingress"):
        hosts = {rule.get("host") for rule in ingress["spec"]["rules"]}
        covered = {host for tls in ingress["spec"].get("tls") or [] if tls.get("secretName")
                   for host in tls.get("hosts") or []}
        if not hosts <= covered:
            raise KubeRayError(f"environment {rendered.env}: Ingress {ingress['metadata']['name']} serves "
                               f"{', '.join(sorted(hosts - covered))} without TLS (spec.tls with a secretName)")


def check_all(rendered: Rendered) -> None:
    for check in (check_pod_ranges, check_disruption_budgets, check_shared_storage, check_body_limit, check_tls):
        check(rendered)
