"""The planner's codes, in the order it checks them (docs/planner.md, docs/design.md)."""

from typing import Final

INVALID_PARALLELISM: Final = "InvalidParallelism"
INVALID_EXPERT_PARALLELISM: Final = "InvalidExpertParallelism"
UNRESOLVED_ARCHITECTURE: Final = "UnresolvedArchitecture"
NO_MATCHING_NODES: Final = "NoMatchingNodes"
TENSOR_PARALLEL_EXCEEDS_NODE: Final = "TensorParallelExceedsNode"
INSUFFICIENT_GPUS: Final = "InsufficientGPUs"
MEMORY_LIMIT_EXCEEDED: Final = "MemoryLimitExceeded"
UNKNOWN_GPU_MEMORY: Final = "UnknownGPUMemory"
INSUFFICIENT_FREE_GPUS: Final = "InsufficientFreeGPUs"

#: Errors make a plan infeasible; the others are warnings.
ERRORS: Final = (
    INVALID_PARALLELISM,
    INVALID_EXPERT_PARALLELISM,
    UNRESOLVED_ARCHITECTURE,
    NO_MATCHING_NODES,
    TENSOR_PARALLEL_EXCEEDS_NODE,
    INSUFFICIENT_GPUS,
    MEMORY_LIMIT_EXCEEDED,
)
WARNINGS: Final = (UNKNOWN_GPU_MEMORY, INSUFFICIENT_FREE_GPUS)

# Reading model.architectureFrom's ConfigMap (planner.resolve_architecture), before planning.
#: The ConfigMap does not exist: the deployment waits for it (as a pod waits for a ConfigMap
#: volume), and the webhook admits with a warning.
CONFIG_MAP_NOT_FOUND: Final = "ConfigMapNotFound"
#: It exists, but the key is missing, or its text is no config.json the parser reads: Rejected.
INVALID_MODEL_CONFIG: Final = "InvalidModelConfig"
