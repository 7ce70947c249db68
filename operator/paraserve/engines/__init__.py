"""Engine commands from a plan: what each rank of vLLM or SGLang runs, and what they refuse.

Pure functions of the spec and a rank's environment contract (api.rank_env: RANK, WORLD_SIZE,
MASTER_ADDR …); layered above the planner and below the controller.
"""

from paraserve.engines.codes import (
    ENGINE_ARGUMENT_CONFLICT,
    ENGINE_SETTING_UNSUPPORTED,
    SEQUENCE_PARALLEL_UNSUPPORTED,
)
from paraserve.engines.launch import EngineCommand
from paraserve.engines.render import command, default_image, problems, with_engine_checks
from paraserve.engines.weights import MODEL_MOUNT, model_argument, model_env, model_volumes

__all__ = [
    "ENGINE_ARGUMENT_CONFLICT",
    "ENGINE_SETTING_UNSUPPORTED",
    "MODEL_MOUNT",
    "SEQUENCE_PARALLEL_UNSUPPORTED",
    "EngineCommand",
    "command",
    "default_image",
    "model_argument",
    "model_env",
    "model_volumes",
    "problems",
    "with_engine_checks",
]
