"""SGLang: one `sglang.launch_server` per rank; ``--tp-size`` and ``--pp-size`` are the totals.

With one GPU per pod, ``--nnodes`` = pipeline × tensor and ``--node-rank`` = RANK; every rank
meets the head at ``--dist-init-addr head:port``. Only the head serves HTTP; metrics are off
unless ``--enable-metrics``.
"""

from __future__ import annotations

from typing import Final

from paraserve.api import Dtype, InferenceDeploymentSpec
from paraserve.api.rank_env import RankEnv
from paraserve.engines.dialect import Dialect
from paraserve.engines.options import Owned, Rendered
from paraserve.engines.weights import model_argument

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

# The user's own choice, rendered only when engine.args leaves it out.
QUANTIZATION = Owned(("--quantization",), "")
SERVED_NAME = Owned(("--served-model-name",), "")

WEIGHT_DTYPES: Final = {
    Dtype.FLOAT32: "float32",
    Dtype.BFLOAT16: "bfloat16",
    Dtype.FLOAT16: "float16",
}
KV_DTYPES: Final = {Dtype.BFLOAT16: "bfloat16", Dtype.FLOAT8: "fp8_e4m3"}

DIALECT: Final = Dialect(
    engine="sglang",
    title="SGLang",
    underscores=UNDERSCORES,
    exact=EXACT,
    weight_dtypes=WEIGHT_DTYPES,
    kv_dtypes=KV_DTYPES,
    quantization_methods="awq, gptq …",
    kv_cache_types="auto, bfloat16, fp8_e4m3, fp8_e5m2, …",
    dtype=DTYPE,
    kv_dtype=KV_DTYPE,
    memory=MEMORY,
    revision=REVISION,
    expert=EXPERT,
    quantization=QUANTIZATION,
    served_name=SERVED_NAME,
)


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
    rendered += DIALECT.storage_options(spec)
    if p.sequence > 1:
        rendered.append(Rendered(LAYERNORM_SP))
    rendered += DIALECT.revision_options(spec)
    rendered += DIALECT.expert_options(spec)
    return rendered


def args(spec: InferenceDeploymentSpec, rank: RankEnv) -> list[str]:
    return DIALECT.args(spec, ["--model-path", model_argument(spec)], options(spec, rank))
