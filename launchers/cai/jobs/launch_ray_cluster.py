"""CML job ``launch_ray_cluster``: start (or find) the Ray cluster of this project.

Inside CML the API address, key and project come from the workload's environment
(CDSW_API_URL, CDSW_APIV2_KEY, CDSW_PROJECT_ID) unless the config or CML_* variables set them.
Cluster info goes to /home/cdsw/ray_cluster_info.json.

Environment: RAY_CLUSTER_CONFIG (default launchers/cai/cluster_config.yaml in the project),
RAY_SERVE_CONFIG (optional serve config to deploy), plus the overrides RAY_NUM_WORKERS,
RAY_WORKER_GPUS, RUNTIME_IDENTIFIER.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _reexec_in_venv(root: Path) -> None:
    """The job starts on the runtime's Python; the package lives in the project venv."""
    python = root / ".venv" / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != python.parent.parent.resolve():
        os.execv(str(python), [str(python), *sys.argv])


def main() -> int:
    root = Path(os.environ.get("HOME") or "/home/cdsw")
    _reexec_in_venv(root)
    from launchers.cai.cluster import CAIClusterManager
    from launchers.cai.errors import CAIError

    config = os.environ.get("RAY_CLUSTER_CONFIG") or str(root / "launchers/cai/cluster_config.yaml")
    try:
        manager = CAIClusterManager.from_file(config)
        info = manager.start_cluster(info_file=root / "ray_cluster_info.json",
                                     serve_config=os.environ.get("RAY_SERVE_CONFIG") or None)
    except CAIError as exc:
        print(f"launch_ray_cluster: error: {exc}", file=sys.stderr)
        return 1
    print(f"Ray cluster ready at {info.head_address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
