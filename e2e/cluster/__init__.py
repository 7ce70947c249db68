"""Local Kubernetes control plane built from Go modules, with fake GPU nodes, for tests."""

from e2e.cluster.gpupool import PoolSpec, Taint, parse_pool
from e2e.cluster.local import CommandError, GpuPool, LocalCluster, running_cluster

__all__ = [
    "CommandError",
    "GpuPool",
    "LocalCluster",
    "PoolSpec",
    "Taint",
    "parse_pool",
    "running_cluster",
]
