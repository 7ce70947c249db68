"""SGLang: one `sglang.launch_server` per rank; ``--tp-size`` and ``--pp-size`` are the totals.

With one GPU per pod, ``--nnodes`` = pipeline × tensor and ``--node-rank`` = RANK; every rank
meets the head at ``--dist-init-addr head:port``. Only the head serves HTTP; metrics are off
unless ``--enable-metrics``.
"""

from __future__ import annotations

from typing import Final

from paraserve.api import Dtype, InferenceDeploymentSpec
from paraserve.api.expert_parallel import UnsupportedExpertParallelism, engine_expert_args
from paraserve.api.rank_env import RankEnv
from paraserve.engines.options import Owned, Rendered, find
from paraserve.engines.weights import model_argument, model_revision

PROGRAM: Final = ("python3", "-m", "sglang.launch_server")
DEFAULT_IMAGE: Final = "lmsysorg/sglang:v0.5.23"
UNDERSCORES: Final = False

MODEL = Owned(("--model-path", "--model"), "model.source / model.name")
TENSOR = Owned(("--tp-size", "--tensor-parallel-size"), "parallelism.tensor")
PIPELINE = Owned(("--pp-size", "--pipeline-parallel-size"), "parallelism.pipeline")
NNODES = Owned(("--nnodes",), "the replica's ranks (pipeline × tensor, one GPU per pod)")
NODE_RANK = Owned(("--node-rank",), "the pod's RANK", per_rank=True)
DIST_INIT = Owned(
    ("--dist-init-addr", "--nccl-init-addr"),
    "the head's stable DNS name and rendezvous port (MASTER_ADDR:MASTER_PORT)",
)
HOST = Owned(("--host",), "the pod network (the API listens on every address)")
PORT = Owned(("--port",), "engine.port")
METRICS = Owned(("--enable-metrics",), "measurement (the head's /metrics)", takes_value=False)
DATA_PARALLEL = Owned(
    ("--dp-size", "--data-parallel-size"),
    "replicas (each replica is one SGLang instance; the replicas are the data parallelism)",
)
MAX_RUNNING = Owned(("--max-running-requests",), "serving.maxBatchSize")
CONTEXT = Owned(("--context-length",), "serving.maxSequenceLength")
DTYPE = Owned(("--dtype",), "model.dtype")
KV_DTYPE = Owned(("--kv-cache-dtype",), "model.kvCacheDtype (default: model.dtype)")
MEMORY = Owned(("--mem-fraction-static",), "gpu.maxMemoryUtilization")
LAYERNORM_SP = Owned(
    ("--enable-layernorm-sp",), "parallelism.sequence (= tensor)", takes_value=False
)
REVISION = Owned(("--revision",), "model.source.huggingFace.revision")
EXPERT = Owned(("--ep-size", "--expert-parallel-size", "--ep"), "parallelism.expert")

OWNED: Final = (
    MODEL,
    TENSOR,
    PIPELINE,
    NNODES,
    NODE_RANK,
    DIST_INIT,
    HOST,
    PORT,
    METRICS,
    DATA_PARALLEL,
    MAX_RUNNING,
    CONTEXT,
    DTYPE,
    KV_DTYPE,
    MEMORY,
    LAYERNORM_SP,
    REVISION,
    EXPERT,
)
#: SGLang options that are a prefix of an owned one but are options of their own.
EXACT: Final = frozenset[str]()

QUANTIZATION = Owned(("--quantization",), "")
SERVED_NAME = Owned(("--served-model-name",), "")

WEIGHT_DTYPES: Final = {
    Dtype.FLOAT32: "float32",
    Dtype.BFLOAT16: "bfloat16",
    Dtype.FLOAT16: "float16",
}
KV_DTYPES: Final = {Dtype.BFLOAT16: "bfloat16", Dtype.FLOAT8: "fp8_e4m3"}


def _has(spec: InferenceDeploymentSpec, owned: Owned) -> bool:
    return bool(find(spec.engine.args, [owned], underscores=UNDERSCORES, exact=EXACT))


def kv_cache_dtype(spec: InferenceDeploymentSpec) -> str | None:
    kv, weights = spec.model.kv_dtype, spec.model.dtype
    if kv == weights and kv in WEIGHT_DTYPES:
        return "auto"
    return KV_DTYPES.get(kv)


def setting_problems(spec: InferenceDeploymentSpec) -> list[str]:
    problems = []
    dtype = spec.model.dtype
    if dtype in (Dtype.INT8, Dtype.INT4) and not _has(spec, QUANTIZATION):
        problems.append(
            f"model.dtype {dtype.value} is a quantized checkpoint: SGLang has no --dtype"
            f" {dtype.value}; name its method in engine.args (--quantization awq, gptq …)"
        )
    if kv_cache_dtype(spec) is None:
        problems.append(
            f"model.kvCacheDtype {spec.model.kv_dtype.value} with model.dtype {dtype.value}:"
            " SGLang's --kv-cache-dtype has no such type (auto, bfloat16, fp8_e4m3, fp8_e5m2,"
            " …)"
        )
    try:
        engine_expert_args("sglang", spec.parallelism)
    except UnsupportedExpertParallelism as error:
        problems.append(str(error))
    return problems


def sequence_problem(spec: InferenceDeploymentSpec) -> str | None:
    """SGLang's LayerNorm SP is Megatron's; it refuses pipeline parallelism, and so do we."""
    p = spec.parallelism
    if p.sequence <= 1 or p.pipeline == 1:
        return None
    return (
        f"parallelism.sequence {p.sequence} with pipeline {p.pipeline}: SGLang's Megatron-style"
        " sequence parallelism (--enable-layernorm-sp) does not combine with pipeline"
        " parallelism: set sequence: 1 or pipeline: 1"
    )


def options(spec: InferenceDeploymentSpec, rank: RankEnv) -> list[Rendered]:
    p = spec.parallelism
    rendered = [
        Rendered(TENSOR, str(p.tensor)),
        Rendered(PIPELINE, str(p.pipeline)),
        Rendered(NNODES, str(rank.world_size)),
        Rendered(NODE_RANK, str(rank.rank)),
        Rendered(DIST_INIT, f"{rank.master_addr}:{rank.master_port}"),
        Rendered(HOST, "0.0.0.0"),
        Rendered(PORT, str(spec.engine.api_port)),
        Rendered(METRICS),
        Rendered(MAX_RUNNING, str(spec.serving.max_batch_size)),
        Rendered(CONTEXT, str(spec.serving.max_sequence_length)),
    ]
    if spec.model.dtype in WEIGHT_DTYPES:
        rendered.append(Rendered(DTYPE, WEIGHT_DTYPES[spec.model.dtype]))
    if (kv := kv_cache_dtype(spec)) is not None:
        rendered.append(Rendered(KV_DTYPE, kv))
    rendered.append(Rendered(MEMORY, f"{spec.gpu.max_memory_utilization:g}"))
    if p.sequence > 1:
        rendered.append(Rendered(LAYERNORM_SP))
    if (revision := model_revision(spec)) is not None:
        rendered.append(Rendered(REVISION, revision))
    rendered += _expert(spec)
    return rendered


def _expert(spec: InferenceDeploymentSpec) -> list[Rendered]:
    """parallelism.expert as this engine spells it (api.expert_parallel); none if it cannot."""
    try:
        flags = engine_expert_args("sglang", spec.parallelism)
    except UnsupportedExpertParallelism:
        return []  # refused in setting_problems
    return [Rendered(EXPERT, flags[1] if len(flags) > 1 else None)] if flags else []


def args(spec: InferenceDeploymentSpec, rank: RankEnv) -> list[str]:
    out = ["--model-path", model_argument(spec)]
    for option in options(spec, rank):
        out += option.argv()
    if spec.model.dtype is Dtype.FLOAT8 and not _has(spec, QUANTIZATION):
        out += ["--quantization", "fp8"]
    if not _has(spec, SERVED_NAME):
        out += ["--served-model-name", spec.model.name]
    return out + list(spec.engine.args)
