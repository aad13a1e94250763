"""How one cluster maps onto CML objects: application names, environment, published files.

Everything the manager and the uploaded launcher script must agree on lives here, so the contract
between them is one screen long. The launcher script itself (scripts/ray_node.py) is stdlib-only
and reads the ``RAY_CAI_*`` variables built below.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from launchers.cai.config import ClusterConfig

STATE_DIR = ".ray-serve-cai"  # relative to the project root (/home/cdsw)


@dataclass(frozen=True)
class NodeSpec:
    role: str  # head | worker
    index: int  # 0 for the head
    name: str  # application name == subdomain
    cpu: float
    memory: float
    gpus: int

    @property
    def node(self) -> str:
        return "head" if self.role == "head" else f"worker-{self.index}"


def cluster_dir(config: ClusterConfig) -> str:
    return f"{STATE_DIR}/{config.cai.cluster_name}"


def head_spec(config: ClusterConfig) -> NodeSpec:
    # The head coordinates only: it never gets GPUs, whatever the config says.
    return NodeSpec("head", 0, f"{config.cai.cluster_name}-head", config.head_cpu, config.head_memory, 0)


def worker_spec(config: ClusterConfig, index: int) -> NodeSpec:
    res = config.cai.resources
    return NodeSpec("worker", index, f"{config.cai.cluster_name}-worker-{index}", res.cpu, res.memory, res.num_gpus)


def desired_specs(config: ClusterConfig) -> list[NodeSpec]:
    return [head_spec(config)] + [worker_spec(config, i) for i in range(1, config.cai.num_workers + 1)]


def owned_name_re(config: ClusterConfig) -> re.Pattern[str]:
    """Application names this cluster owns (and only those: stop never touches anything else)."""
    return re.compile(rf"^{re.escape(config.cai.cluster_name)}-(head|worker-\d+)$")


def launcher_script() -> tuple[str, bytes]:
    """The launcher's project path and bytes. The path carries a content hash because CML uploads
    never overwrite: a changed script gets a new name instead of ``ray_node(1).py``."""
    content = resources.files("launchers.cai.scripts").joinpath("ray_node.py").read_bytes()
    digest = hashlib.sha256(content).hexdigest()[:12]
    return f"{STATE_DIR}/launchers/ray_node-{digest}.py", content


def node_environment(config: ClusterConfig, spec: NodeSpec, *, nonce: str, token: str) -> dict[str, str]:
    ray = config.ray
    num_cpus = ray.num_cpus or max(1, int(spec.cpu))
    if spec.role == "head" and ray.head_num_cpus is not None:
        num_cpus = ray.head_num_cpus
    env = {
        "RAY_CAI_ROLE": spec.role,
        "RAY_CAI_NODE": spec.node,
        "RAY_CAI_DIR": cluster_dir(config),
        "RAY_CAI_TOKEN": token,
        "RAY_CAI_NONCE": nonce,
        "RAY_CAI_PORT": str(ray.port),
        "RAY_CAI_DASHBOARD_PORT": str(ray.dashboard_port),
        "RAY_CAI_NUM_CPUS": str(num_cpus),
        "RAY_CAI_NUM_GPUS": str(spec.gpus),
        "RAY_CAI_INCLUDE_DASHBOARD": "1" if ray.include_dashboard else "0",
        "RAY_CAI_FREE_PORTS": "1" if ray.local_ports == "free" else "0",
        "RAY_CAI_WAIT_S": str(int(config.cai.start_timeout_s)),
    }
    if ray.object_store_memory_mb:
        env["RAY_CAI_OBJECT_STORE_MB"] = str(ray.object_store_memory_mb)
    if ray.temp_dir:
        env["RAY_CAI_TEMP_DIR"] = ray.temp_dir
    return env


def published_path(config: ClusterConfig, spec: NodeSpec) -> str:
    """Where the node's launcher writes its readiness record (the head's holds the address)."""
    base = cluster_dir(config)
    return f"{base}/head.json" if spec.role == "head" else f"{base}/nodes/{spec.node}.json"


def parse_published(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None  # half-written or garbage: treat as not yet published
    return data if isinstance(data, dict) else None
