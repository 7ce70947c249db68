"""vLLM (≥ 0.11, multiprocessing executor): one `vllm serve` per rank, the head serving the API.

With one GPU per pod every pod is one vLLM "node": ``--nnodes`` = pipeline × tensor and
``--node-rank`` = RANK, which is vLLM's own global rank order (PP-major, Megatron's). Every
rank but the head runs ``--headless``; only the head serves the OpenAI API and /metrics.
"""

from __future__ import annotations

from typing import Final

from paraserve.api import Dtype, InferenceDeploymentSpec
from paraserve.api.rank_env import RankEnv
from paraserve.engines.dialect import Dialect
from paraserve.engines.options import Owned, Rendered
from paraserve.engines.weights import model_argument

PROGRAM: Final = ("vllm", "serve")
DEFAULT_IMAGE: Final = "vllm/vllm-openai:v0.32.0"
#: vLLM's parser reads ``--tensor_parallel_size`` as ``--tensor-parallel-size``.
UNDERSCORES: Final = True

MODEL = Owned(("--model",), "model.source / model.name (the model is vLLM's first argument)")
TENSOR = Owned(("--tensor-parallel-size", "-tp"), "parallelism.tensor")
PIPELINE = Owned(("--pipeline-parallel-size", "-pp"), "parallelism.pipeline")
NNODES = Owned(("--nnodes", "-n"), "the replica's ranks (pipeline × tensor, one GPU per pod)")
NODE_RANK = Owned(("--node-rank", "-r"), "the pod's RANK", per_rank=True)
MASTER_ADDR = Owned(("--master-addr",), "the head's stable DNS name (MASTER_ADDR)")
MASTER_PORT = Owned(("--master-port",), "the rendezvous port (MASTER_PORT)")
HEADLESS = Owned(
    ("--headless",), "its rank (on every rank but the head)", takes_value=False, per_rank=True
)
HOST = Owned(("--host",), "the pod network (the API listens on every address)")
PORT = Owned(("--port",), "engine.port")
BACKEND = Owned(
    ("--distributed-executor-backend",), "the one-process-per-pod layout (vLLM's mp executor)"
)
DATA_PARALLEL = Owned(
    ("--data-parallel-size", "-dp"),
    "replicas (each replica is one vLLM instance; the replicas are the data parallelism)",
)
PREFILL_CONTEXT = Owned(
    ("--prefill-context-parallel-size", "-pcp"),
    "the replica's ranks (prefill context parallelism adds ranks beyond pipeline × tensor)",
)
MAX_SEQS = Owned(("--max-num-seqs",), "serving.maxBatchSize")
MAX_LEN = Owned(("--max-model-len",), "serving.maxSequenceLength")
DTYPE = Owned(("--dtype",), "model.dtype")
KV_DTYPE = Owned(("--kv-cache-dtype",), "model.kvCacheDtype (default: model.dtype)")
MEMORY = Owned(
    ("--gpu-memory-utilization", "--device-memory-utilization"), "gpu.maxMemoryUtilization"
)
REVISION = Owned(("--revision",), "model.source.huggingFace.revision")
EXPERT = Owned(
    ("--enable-expert-parallel", "-ep"),
    "parallelism.expert (vLLM's expert parallelism is EP = tensor)",
    takes_value=False,
)

OWNED: Final = (
    MODEL,
    TENSOR,
    PIPELINE,
    NNODES,
    NODE_RANK,
    MASTER_ADDR,
    MASTER_PORT,
    HEADLESS,
    HOST,
    PORT,
    BACKEND,
    DATA_PARALLEL,
    PREFILL_CONTEXT,
    MAX_SEQS,
    MAX_LEN,
    DTYPE,
    KV_DTYPE,
    MEMORY,
    REVISION,
    EXPERT,
)
#: vLLM options that are a prefix of an owned one but are options of their own.
EXACT: Final = frozenset({"--model-impl"})

# The user's own choice, rendered only when engine.args leaves it out.
QUANTIZATION = Owned(("--quantization", "-q"), "")
SERVED_NAME = Owned(("--served-model-name",), "")

WEIGHT_DTYPES: Final = {
    Dtype.FLOAT32: "float32",
    Dtype.BFLOAT16: "bfloat16",
    Dtype.FLOAT16: "float16",
}
KV_DTYPES: Final = {
    Dtype.BFLOAT16: "bfloat16",
    Dtype.FLOAT16: "float16",
    Dtype.FLOAT8: "fp8",
    Dtype.INT8: "int8_per_token_head",
    Dtype.INT4: "int4_per_token_head",
}

DIALECT: Final = Dialect(
    engine="vllm",
    title="vLLM",
    underscores=UNDERSCORES,
    exact=EXACT,
    weight_dtypes=WEIGHT_DTYPES,
    kv_dtypes=KV_DTYPES,
    quantization_methods="awq, gptq, compressed-tensors …",
    kv_cache_types="auto, bfloat16, float16, fp8, int8_per_token_head, int4_per_token_head",
    dtype=DTYPE,
    kv_dtype=KV_DTYPE,
    memory=MEMORY,
    revision=REVISION,
    expert=EXPERT,
    quantization=QUANTIZATION,
    served_name=SERVED_NAME,
)


def sequence_problem(spec: InferenceDeploymentSpec) -> str | None:
    """vLLM has no Megatron-style sequence parallelism to map parallelism.sequence onto."""
    p = spec.parallelism
    if p.sequence <= 1:
        return None
    return (
        f"parallelism.sequence {p.sequence}: vLLM has no Megatron-style sequence parallelism"
        " (its context parallelism, -dcp/-pcp, shards the KV cache or adds ranks; the former"
        " compile pass pass_config.enable_sp is gone from vLLM 0.32): set sequence: 1"
    )


def options(spec: InferenceDeploymentSpec, rank: RankEnv) -> list[Rendered]:
    """Every option the plan sets for this rank, in the order they are written."""
    p = spec.parallelism
    rendered = [
        Rendered(TENSOR, str(p.tensor)),
        Rendered(PIPELINE, str(p.pipeline)),
        Rendered(NNODES, str(rank.world_size)),
        Rendered(NODE_RANK, str(rank.rank)),
        Rendered(MASTER_ADDR, rank.master_addr),
        Rendered(MASTER_PORT, str(rank.master_port)),
    ]
    if rank.world_size > 1:
        rendered.append(Rendered(BACKEND, "mp"))
    if not rank.is_coordinator:
        rendered.append(Rendered(HEADLESS))
    rendered += [
        Rendered(HOST, "0.0.0.0"),
        Rendered(PORT, str(spec.engine.api_port)),
        Rendered(MAX_SEQS, str(spec.serving.max_batch_size)),
        Rendered(MAX_LEN, str(spec.serving.max_sequence_length)),
    ]
    rendered += DIALECT.storage_options(spec)
    rendered += DIALECT.revision_options(spec)
    rendered += DIALECT.expert_options(spec)
    return rendered


def args(spec: InferenceDeploymentSpec, rank: RankEnv) -> list[str]:
    """The arguments after ``vllm serve``: the model, the plan's options, then engine.args."""
    return DIALECT.args(spec, [model_argument(spec)], options(spec, rank))
