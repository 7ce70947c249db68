"""The codes of what an engine refuses, beside the planner's (planner/codes.py)."""

from typing import Final

#: engine.args sets something the plan already decides (a parallel size, the node count, …).
ENGINE_ARGUMENT_CONFLICT: Final = "EngineArgumentConflict"
#: parallelism.sequence > 1 where the engine has no Megatron-style sequence parallelism.
SEQUENCE_PARALLEL_UNSUPPORTED: Final = "SequenceParallelUnsupported"
#: A dtype or KV-cache dtype of the spec that the engine has no flag for.
ENGINE_SETTING_UNSUPPORTED: Final = "EngineSettingUnsupported"

ERRORS: Final = (
    ENGINE_ARGUMENT_CONFLICT,
    SEQUENCE_PARALLEL_UNSUPPORTED,
    ENGINE_SETTING_UNSUPPORTED,
)
