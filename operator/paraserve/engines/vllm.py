"""vLLM (≥ 0.11, multiprocessing executor): one `vllm serve` per rank, the head serving the API.

With one GPU per pod every pod is one vLLM "node": ``--nnodes`` = pipeline × tensor and
``--node-rank`` = RANK, which is vLLM's own global rank order (PP-major, Megatron's). Every
rank but the head runs ``--headless``; only the head serves the OpenAI API and /metrics.
"""

from __future__ import annotations

from typing import Final

from paraserve.api import Dtype, InferenceDeploymentSpec
from paraserve.api.expert_parallel import UnsupportedExpertParallelism, engine_expert_args
from paraserve.api.rank_env import RankEnv
from paraserve.engines.options import Owned, Rendered, find
from paraserve.engines.weights import model_argument, model_revision

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


def _has(spec: InferenceDeploymentSpec, owned: Owned) -> bool:
    return bool(find(spec.engine.args, [owned], underscores=UNDERSCORES, exact=EXACT))


def kv_cache_dtype(spec: InferenceDeploymentSpec) -> str | None:
    """vLLM's name for the KV-cache type; None when vLLM has none (float32 under a narrower
    model dtype)."""
    kv, weights = spec.model.kv_dtype, spec.model.dtype
    if kv == weights and kv in WEIGHT_DTYPES:
        return "auto"  # the model's own type
    return KV_DTYPES.get(kv)


def setting_problems(spec: InferenceDeploymentSpec) -> list[str]:
    """Settings of the spec vLLM cannot honour, one line each."""
    problems = []
    dtype = spec.model.dtype
    if dtype in (Dtype.INT8, Dtype.INT4) and not _has(spec, QUANTIZATION):
        problems.append(
            f"model.dtype {dtype.value} is a quantized checkpoint: vLLM has no --dtype"
            f" {dtype.value}; name its method in engine.args (--quantization awq, gptq,"
            " compressed-tensors …)"
        )
    if kv_cache_dtype(spec) is None:
        problems.append(
            f"model.kvCacheDtype {spec.model.kv_dtype.value} with model.dtype {dtype.value}:"
            " vLLM's --kv-cache-dtype has no such type (auto, bfloat16, float16, fp8,"
            " int8_per_token_head, int4_per_token_head)"
        )
    try:
        engine_expert_args("vllm", spec.parallelism)
    except UnsupportedExpertParallelism as error:
        problems.append(str(error))
    return problems


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
    if spec.model.dtype in WEIGHT_DTYPES:
        rendered.append(Rendered(DTYPE, WEIGHT_DTYPES[spec.model.dtype]))
    if (kv := kv_cache_dtype(spec)) is not None:
        rendered.append(Rendered(KV_DTYPE, kv))
    rendered.append(Rendered(MEMORY, f"{spec.gpu.max_memory_utilization:g}"))
    if (revision := model_revision(spec)) is not None:
        rendered.append(Rendered(REVISION, revision))
    rendered += _expert(spec)
    return rendered


def _expert(spec: InferenceDeploymentSpec) -> list[Rendered]:
    """parallelism.expert as this engine spells it (api.expert_parallel); none if it cannot."""
    try:
        flags = engine_expert_args("vllm", spec.parallelism)
    except UnsupportedExpertParallelism:
        return []  # refused in setting_problems
    return [Rendered(EXPERT, flags[1] if len(flags) > 1 else None)] if flags else []


def args(spec: InferenceDeploymentSpec, rank: RankEnv) -> list[str]:
    """The arguments after ``vllm serve``: the model, the plan's options, then engine.args."""
    out = [model_argument(spec)]
    for option in options(spec, rank):
        out += option.argv()
    if spec.model.dtype is Dtype.FLOAT8 and not _has(spec, QUANTIZATION):
        out += ["--quantization", "fp8"]  # vLLM quantizes a 16-bit checkpoint when loading
    if not _has(spec, SERVED_NAME):
        out += ["--served-model-name", spec.model.name]  # clients ask for model.name
    return out + list(spec.engine.args)
