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
from paraserve.planner.plan import plan
from paraserve.planner.pool import Exclusions, Pool, PoolNode, pod_gpu_request
from paraserve.planner.suggest import Suggestion, closest, suggest

__all__ = [
    "Exclusions",
    "Pool",
    "PoolNode",
    "Rank",
    "Suggestion",
    "closest",
    "codes",
    "plan",
    "pod_gpu_request",
    "rank_of",
    "ranks",
    "stage_layer_counts",
    "stage_layers",
    "stage_ranks",
    "suggest",
]
