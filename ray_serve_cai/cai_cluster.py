"""The original import path for the CAI cluster manager: ``from ray_serve_cai.cai_cluster import
CAIClusterManager``. The implementation lives in ``launchers.cai``."""

from launchers.cai.cluster import CAIClusterManager, ClusterInfo, ClusterStatus
from launchers.cai.config import ClusterConfig, load_config

__all__ = ["CAIClusterManager", "ClusterConfig", "ClusterInfo", "ClusterStatus", "load_config"]
