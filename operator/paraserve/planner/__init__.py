"""The planner: pure functions of (spec, pool) → plan. No I/O; imports only paraserve.api.

Entry points::

    pool = Pool.from_objects(nodes, pods, spec)   # plain Node/Pod dicts
    verdict = plan(spec, pool)                    # paraserve.api.Plan
    options = suggest(spec, pool)                 # strategies that fit, best first
    ranks(spec.parallelism); stage_layers(num_layers, pipeline)   # pod layout
"""

from paraserve.api.rank_layout import (
    Rank,
    rank_of,
    ranks,
    stage_layer_counts,
    stage_layers,
    stage_ranks,
)
from paraserve.planner import codes
from paraserve.planner.huggingface import (
    SUPPORTED_MODEL_TYPES,
    ConfigError,
    ConfigMapNotFound,
    architecture_from_config,
    architecture_from_text,
    resolve_architecture,
)
from paraserve.planner.plan import plan
from paraserve.planner.pool import Exclusions, Pool, PoolNode, pod_gpu_request
from paraserve.planner.suggest import MoreNodes, Suggestion, closest, suggest, suggest_more_nodes

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ConfigError",
    "ConfigMapNotFound",
    "Exclusions",
    "MoreNodes",
    "Pool",
    "PoolNode",
    "Rank",
    "Suggestion",
    "architecture_from_config",
    "architecture_from_text",
    "closest",
    "codes",
    "plan",
    "pod_gpu_request",
    "rank_of",
    "ranks",
    "resolve_architecture",
    "stage_layer_counts",
    "stage_layers",
    "stage_ranks",
    "suggest",
    "suggest_more_nodes",
]
