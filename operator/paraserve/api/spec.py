"""The desired state of an InferenceDeployment: model, parallelism, pool, worker, SLO."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from paraserve.api.architecture import Architecture
from paraserve.api.base import SpecModel
from paraserve.api.constants import DEFAULT_GPU_RESOURCE
from paraserve.api.units import Bytes, Dtype, Duration, ParameterCount

GiB = 2**30

#: Largest degree of any parallelism: beyond every real model, small enough to plan quickly.
MAX_DEGREE = 1024
MAX_REPLICAS = 65536
#: Most ranks of one replica (pipeline × tensor): beyond any real cluster's gang, and what
#: keeps every rank's topology and the status small.
MAX_WORLD_SIZE = 16384

# Size limits of what a user controls and the operator copies into every rank pod (a pod is
# stored whole in etcd; thousands of them carry these).
MAX_NAME = 253  # a DNS subdomain, a resource or label key
MAX_LABEL_VALUE = 63
MAX_TEXT = 1024  # an image reference, a model id, a path
MAX_ARGUMENT = 4096  # one command or args entry
MAX_ARGUMENTS = 256
MAX_ENV = 256
MAX_ENV_VALUE = 8192
MAX_TOLERATIONS = 64
MAX_SELECTOR = 64

Argument = Annotated[str, Field(max_length=MAX_ARGUMENT)]
LabelValue = Annotated[str, Field(max_length=MAX_LABEL_VALUE)]


def _defaulted(model: type[SpecModel]) -> Callable[[dict[str, Any]], None]:
    """The CRD default of a nested object: the model's own defaults, spelled out.

    The API server validates a default (and its CEL rules) as written, without first
    applying the defaults of the fields inside it, so ``{}`` would not do. Written when the
    JSON schema is made: an instance made at import would build the model's validator then
    (WireModel defers that to first use).
    """

    def add_default(schema: dict[str, Any]) -> None:
        schema["default"] = model().model_dump(mode="json", by_alias=True, exclude_none=True)

    return add_default


class ConfigMapKeyRef(SpecModel):
    """A key of a ConfigMap in the deployment's namespace (as core/v1 configMapKeyRef)."""

    name: str = Field(min_length=1, description="Name of the ConfigMap.")
    key: str = Field("config.json", min_length=1, description="Key holding the config.json.")


class ArchitectureSource(SpecModel):
    """Where to read the architecture from instead of writing it in the spec."""

    config_map_key_ref: ConfigMapKeyRef = Field(
        description="A ConfigMap key holding the model's Hugging Face config.json"
        " (kubectl create configmap NAME --from-file=config.json)."
    )


class SecretKeySelector(SpecModel):
    """One key of a Secret in the deployment's namespace (core/v1 SecretKeySelector)."""

    name: str = Field(min_length=1, description="Secret name.")
    key: str = Field("token", min_length=1, description="Key in the Secret. Default: token.")


class PersistentVolumeClaimSource(SpecModel):
    """Weights already on a PersistentVolumeClaim, mounted read-only into every rank."""

    claim_name: str = Field(min_length=1, description="Claim in the deployment's namespace.")
    path: str = Field(
        "",
        description="Directory of the model inside the claim (relative, no '..'). Default: its"
        " root.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!matches(self, '^/|(^|/)[.][.](/|$)')",
                    "message": "path is relative to the claim and has no '..'",
                }
            ]
        },
    )

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        if path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"path {path!r} is relative to the claim and has no '..'")
        return path.strip("/")


class CacheVolume(SpecModel):
    """Where a rank keeps the weights it downloads."""

    claim_name: str | None = Field(
        None,
        min_length=1,
        description="A PersistentVolumeClaim shared by the ranks (ReadWriteMany for more than"
        " one node). Default: an emptyDir per pod, so every rank downloads.",
    )
    size_limit: Bytes | None = Field(None, description="Size limit of the emptyDir.")


class HuggingFaceSource(SpecModel):
    """Weights downloaded by each rank from the Hugging Face Hub."""

    id: str | None = Field(None, min_length=1, description="Repository id. Default: model.name.")
    revision: str | None = Field(None, min_length=1, description="Branch, tag or commit.")
    token_secret: SecretKeySelector | None = Field(
        None, description="Secret key holding an access token (set as HF_TOKEN)."
    )
    cache: CacheVolume | None = Field(
        None, description="Download cache (HF_HOME). Default: an emptyDir per pod."
    )


class ModelSource(SpecModel):
    """Where the engines read the weights: exactly one of the sources."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.persistentVolumeClaim) != has(self.huggingFace)",
                    "message": "give exactly one of model.source.persistentVolumeClaim and"
                    " model.source.huggingFace",
                }
            ]
        }
    )

    persistent_volume_claim: PersistentVolumeClaimSource | None = Field(
        None, description="Weights on a PersistentVolumeClaim."
    )
    hugging_face: HuggingFaceSource | None = Field(
        None, description="Weights from the Hugging Face Hub."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.persistent_volume_claim is None) == (self.hugging_face is None):
            raise ValueError(
                "give exactly one of model.source.persistentVolumeClaim and"
                " model.source.huggingFace"
            )
        return self


class ModelSpec(SpecModel):
    """The model served, its numeric types and its size."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.parameters) || has(self.architectureFrom)"
                    " || (has(self.architecture)"
                    " && has(self.architecture.numLayers) && has(self.architecture.hiddenSize)"
                    " && has(self.architecture.numAttentionHeads)"
                    " && has(self.architecture.intermediateSize)"
                    " && has(self.architecture.vocabSize))",
                    "message": "give model.parameters (coarse mode), a complete"
                    " model.architecture (exact mode) or model.architectureFrom",
                },
                {
                    "rule": "!has(self.architecture) || !has(self.architectureFrom)",
                    "message": "give model.architecture or model.architectureFrom, not both",
                },
            ]
        }
    )

    name: str = Field(
        min_length=1, max_length=MAX_TEXT, description="Model name, e.g. a Hugging Face id."
    )
    dtype: Dtype = Field(
        Dtype.BFLOAT16,
        description="Weight type; bytes 4/2/2/1/1/0.5. With architecture.quantization, the type"
        " of the parts it leaves unquantized.",
    )
    kv_cache_dtype: Dtype | None = Field(None, description="KV cache type. Default: dtype.")
    architecture: Architecture | None = Field(
        None, description="Transformer shape; complete means exact memory mode."
    )
    architecture_from: ArchitectureSource | None = Field(
        None,
        description="Read the architecture from a ConfigMap in this namespace holding the"
        " model's config.json (exact memory mode; re-planned when it changes, Waiting while it"
        " does not exist); excludes architecture.",
    )
    parameters: ParameterCount | None = Field(
        None,
        description="Parameter count for coarse mode: 7B, 8.03B, 70e9, 405B or an integer.",
    )
    source: ModelSource | None = Field(
        None,
        description="Where the vllm and sglang engines read the weights. Default: the engine"
        " downloads model.name itself, into the pod.",
    )

    @model_validator(mode="after")
    def _needs_size(self) -> ModelSpec:
        if self.architecture is not None and self.architecture_from is not None:
            raise ValueError("give model.architecture or model.architectureFrom, not both")
        if (
            self.parameters is None
            and self.architecture_from is None
            and not (self.architecture and self.architecture.is_complete)
        ):
            raise ValueError(
                "give model.parameters (coarse mode) or a complete model.architecture "
                "(numLayers, hiddenSize, numAttentionHeads, intermediateSize, vocabSize)"
            )
        return self

    @property
    def kv_dtype(self) -> Dtype:
        return self.kv_cache_dtype or self.dtype

    @property
    def exact(self) -> bool:
        """Exact memory mode: the architecture is complete."""
        return self.architecture is not None and self.architecture.is_complete


class Parallelism(SpecModel):
    """Degrees of parallelism per replica; ranks = pipeline × tensor, one GPU each."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.sequence == 1 || self.sequence == self.tensor",
                    "message": "sequence must be 1 or equal to tensor: sequence parallelism"
                    " shards activations inside the tensor-parallel group",
                },
                {
                    "rule": f"self.pipeline * self.tensor <= {MAX_WORLD_SIZE}",
                    "message": f"pipeline × tensor (the ranks of one replica) must be at most"
                    f" {MAX_WORLD_SIZE}",
                },
            ]
        }
    )

    pipeline: int = Field(
        1, ge=1, le=MAX_DEGREE, description="Pipeline stages (PP); layers are split across them."
    )
    tensor: int = Field(
        1, ge=1, le=MAX_DEGREE, description="Tensor-parallel degree (TP): GPUs per stage."
    )
    sequence: int = Field(
        1,
        ge=1,
        le=MAX_DEGREE,
        description="Sequence-parallel degree (SP), 1 or tensor: shards activations inside the"
        " tensor-parallel group and adds no GPUs.",
    )
    expert: int = Field(
        1,
        ge=1,
        le=MAX_DEGREE,
        description="Expert-parallel degree (EP), dividing tensor: each stage's tensor-parallel"
        " group splits the routed experts EP ways, each shard tensor-parallel over tensor/EP"
        " ranks (SGLang --ep-size; vLLM --enable-expert-parallel is EP = tensor). Adds no GPUs.",
    )

    @property
    def world_size(self) -> int:
        """Ranks per replica."""
        return self.pipeline * self.tensor

    @property
    def expert_tensor(self) -> int:
        """Ranks each routed expert is tensor-parallel over: tensor / expert (at least 1)."""
        return max(self.tensor // self.expert, 1)


class Serving(SpecModel):
    """The load each replica is sized for (drives KV cache and activation memory)."""

    max_batch_size: int = Field(1, ge=1, description="Concurrent sequences per replica.")
    max_sequence_length: int = Field(
        4096, ge=1, description="Longest sequence (prompt + generated tokens)."
    )
    multi_token_prediction: bool = Field(
        False,
        description="Load the checkpoint's multi-token-prediction modules"
        " (architecture.mtpLayers) as the draft of speculative decoding, on the last stage.",
    )


class GpuSpec(SpecModel):
    """The GPU each rank gets."""

    resource_name: str = Field(
        DEFAULT_GPU_RESOURCE,
        min_length=1,
        max_length=MAX_NAME,
        description="Extended resource that counts GPUs.",
    )
    memory: Bytes | None = Field(
        None,
        description="Memory of one GPU (80Gi, 80G, 81559Mi). Default: the smallest"
        " nvidia.com/gpu.memory node label (MiB) in the pool.",
    )
    max_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="Largest fraction of GPU memory one rank may plan to use."
    )


class MemorySpec(SpecModel):
    """Memory the model does not account for."""

    overhead_per_gpu: Bytes = Field(
        GiB, description="Runtime reserve added to every GPU (CUDA context, allocator, buffers)."
    )


class TolerationOperator(enum.StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class Toleration(SpecModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(
        None,
        max_length=MAX_NAME + MAX_LABEL_VALUE + 1,
        description="Taint key; empty with Exists tolerates every taint.",
    )
    operator: TolerationOperator = Field(TolerationOperator.EQUAL, description="Exists or Equal.")
    value: str | None = Field(
        None, max_length=MAX_LABEL_VALUE, description="Taint value matched by Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, description="How long a NoExecute taint is tolerated."
    )

    def tolerates(self, taint: dict[str, Any]) -> bool:
        """Kubernetes' matching rule for one taint."""
        if self.effect and self.effect != taint.get("effect"):
            return False
        if not self.key:
            return self.operator is TolerationOperator.EXISTS
        if self.key != taint.get("key"):
            return False
        if self.operator is TolerationOperator.EXISTS:
            return True
        return (self.value or "") == (taint.get("value") or "")


class Placement(SpecModel):
    """Which nodes form the pool and how ranks are laid out on them."""

    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_SELECTOR,
        description="Labels a node must carry to be in the pool.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=MAX_TOLERATIONS, description="Taints the ranks tolerate."
    )
    tensor_parallel_within_node: bool = Field(
        True, description="Keep each tensor-parallel group on one node (NVLink, not network)."
    )


class WorkerSpec(SpecModel):
    """The rank container; the operator adds the one GPU and the rank environment."""

    image: str | None = Field(
        None, max_length=MAX_TEXT, description="Image. Default: the operator's worker image."
    )
    command: list[Argument] | None = Field(
        None, max_length=MAX_ARGUMENTS, description="Entrypoint override."
    )
    args: list[Argument] | None = Field(None, max_length=MAX_ARGUMENTS, description="Arguments.")
    env: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=MAX_ENV,
        description="Extra environment (core/v1 EnvVar objects).",
        # The CRD types each EnvVar, so its size is bounded there too.
        json_schema_extra={
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_NAME,
                        "description": "Variable name.",
                    },
                    "value": {
                        "type": "string",
                        "maxLength": MAX_ENV_VALUE,
                        "description": "Value.",
                    },
                    "valueFrom": {
                        "type": "object",
                        "additionalProperties": True,
                        "description": "core/v1 EnvVarSource (fieldRef, secretKeyRef, …).",
                    },
                },
            }
        },
    )
    resources: dict[str, Any] = Field(
        default_factory=dict,
        max_length=3,  # limits, requests, claims
        description="core/v1 ResourceRequirements for cpu/memory; the operator adds the GPU.",
    )

    @field_validator("resources")
    @classmethod
    def _resource_requirements(cls, resources: dict[str, Any]) -> dict[str, Any]:
        # Rendered into every rank pod: a shape the API server would refuse there is refused here.
        for key, value in resources.items():
            if key in ("limits", "requests"):
                if not isinstance(value, dict) or not all(
                    isinstance(name, str)
                    and isinstance(amount, str | int | float)
                    and not isinstance(amount, bool)
                    for name, amount in value.items()
                ):
                    raise ValueError(
                        f"resources.{key} must map resource names to quantities"
                        " (for example {cpu: '4', memory: 16Gi})"
                    )
            elif key == "claims":
                if not isinstance(value, list) or not all(
                    isinstance(claim, dict) and isinstance(claim.get("name"), str)
                    for claim in value
                ):
                    raise ValueError("resources.claims must be a list of {name: …}")
            else:
                raise ValueError(
                    f"resources: unknown key {key!r}; valid keys are limits, requests, claims"
                )
        return resources

    @field_validator("env")
    @classmethod
    def _env_vars(cls, env: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for number, variable in enumerate(env):
            name, value = variable.get("name"), variable.get("value")
            if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
                raise ValueError(f"env[{number}].name must be a string of 1–{MAX_NAME} characters")
            if value is not None and (not isinstance(value, str) or len(value) > MAX_ENV_VALUE):
                raise ValueError(
                    f"env[{number}] ({name}).value must be a string of at most"
                    f" {MAX_ENV_VALUE} characters"
                )
        return env


class EngineName(enum.StrEnum):
    """What runs in each rank container."""

    PARASERVE = "paraserve"  # the reference worker
    VLLM = "vllm"
    SGLANG = "sglang"
    CUSTOM = "custom"  # the worker's own command with the rank environment


#: The engines whose command the operator renders from the plan.
RENDERED_ENGINES = frozenset({EngineName.VLLM, EngineName.SGLANG})

#: The OpenAI-compatible HTTP port each rendered engine listens on by default.
DEFAULT_ENGINE_PORTS = {EngineName.VLLM: 8000, EngineName.SGLANG: 30000}


class EngineSpec(SpecModel):
    """The inference engine of every rank; for vllm and sglang the operator writes the command."""

    name: EngineName = Field(
        EngineName.PARASERVE,
        description="paraserve (the reference worker), vllm, sglang, or custom (worker.command"
        " with the rank environment).",
    )
    args: list[str] = Field(
        default_factory=list,
        description="Extra arguments of vllm or sglang, after the rendered ones; an argument the"
        " plan already sets (parallel sizes, nodes, ranks, addresses, serving limits) is"
        " refused.",
    )
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="HTTP port of the head's OpenAI-compatible API and /metrics. Default: 8000"
        " (vllm), 30000 (sglang).",
    )

    @property
    def rendered(self) -> bool:
        """The operator renders this engine's command from the plan."""
        return self.name in RENDERED_ENGINES

    @property
    def api_port(self) -> int | None:
        """The head's HTTP port; None for the engines whose command is not rendered."""
        if self.port is not None:
            return self.port
        return DEFAULT_ENGINE_PORTS.get(self.name)


class MetricsProfile(enum.StrEnum):
    """Which metric names the ranks expose."""

    PARASERVE = "paraserve"
    VLLM = "vllm"
    SGLANG = "sglang"


class MetricsSpec(SpecModel):
    """Where each rank serves Prometheus metrics."""

    port: int = Field(9400, ge=1, le=65535, description="Metrics port on every rank.")
    path: str = Field(
        "/metrics", pattern=r"^/", max_length=MAX_TEXT, description="HTTP path of the metrics."
    )
    profile: MetricsProfile = Field(
        MetricsProfile.PARASERVE, description="Metric names to read: paraserve, vllm or sglang."
    )


class SloSpec(SpecModel):
    """Service-level objectives checked against measured metrics (condition MeetsSLO)."""

    prefill_p99: Duration | None = Field(
        None, description="Largest P99 prefill latency: 1s, 800ms or seconds."
    )
    decode_p99_per_token: Duration | None = Field(
        None, description="Largest P99 decode latency per token: 100ms or seconds."
    )
    min_throughput_rps: float | None = Field(
        None, alias="minThroughputRPS", ge=0, description="Smallest throughput, requests/second."
    )


#: Most gang restarts failurePolicy.maxRestarts may allow: the operator keeps one time per
#: restart in the gang annotation, so the bound keeps that annotation small.
MAX_RESTARTS = 100
DEFAULT_RESTART_WINDOW = 3600.0


class FailurePolicy(SpecModel):
    """When a replica that keeps failing is stopped, and when one that stopped generating
    counts as failed (as a Job's backoffLimit, per replica)."""

    max_restarts: int | None = Field(
        None,
        ge=0,
        le=MAX_RESTARTS,
        description="Gang restarts of one replica allowed within restartWindow; the failure"
        " after that stops the replica (its pods deleted, not recreated) and the deployment is"
        " Failed until the spec is edited. 0: the first failure stops it. Default: unlimited,"
        " as LeaderWorkerSet.",
    )
    restart_window: Duration = Field(
        DEFAULT_RESTART_WINDOW,
        gt=0,
        description="Span over which restarts are counted against maxRestarts: 30m, 1h or"
        " seconds. Default: 1h.",
        json_schema_extra={"default": "1h"},
    )
    stall_timeout: Duration | None = Field(
        None,
        gt=0,
        description="Restart a replica as a gang when its head reports requests waiting or"
        " running but generates no token for this long: 5m or seconds. Default: off.",
    )


class InferenceDeploymentSpec(SpecModel):
    """A model served by replicas × pipeline × tensor GPUs, one rank per GPU."""

    model: ModelSpec = Field(description="The model and its size.")
    parallelism: Parallelism = Field(
        default_factory=Parallelism,
        json_schema_extra=_defaulted(Parallelism),
        description="Pipeline, tensor and sequence degrees.",
    )
    replicas: int = Field(
        1,
        ge=0,
        le=MAX_REPLICAS,
        description="Independent copies (data parallel); each is one gang of ranks.",
    )
    serving: Serving = Field(
        default_factory=Serving,
        json_schema_extra=_defaulted(Serving),
        description="Batch and sequence sizing.",
    )
    gpu: GpuSpec = Field(
        default_factory=GpuSpec,
        json_schema_extra=_defaulted(GpuSpec),
        description="The GPU of each rank.",
    )
    memory: MemorySpec = Field(
        default_factory=MemorySpec,
        json_schema_extra=_defaulted(MemorySpec),
        description="Per-GPU reserve.",
    )
    placement: Placement = Field(
        default_factory=Placement,
        json_schema_extra=_defaulted(Placement),
        description="Node pool and layout.",
    )
    worker: WorkerSpec = Field(
        default_factory=WorkerSpec,
        json_schema_extra=_defaulted(WorkerSpec),
        description="The rank container.",
    )
    engine: EngineSpec = Field(
        default_factory=EngineSpec,
        json_schema_extra=_defaulted(EngineSpec),
        description="The inference engine each rank runs.",
    )
    metrics: MetricsSpec = Field(
        default_factory=MetricsSpec,
        json_schema_extra=_defaulted(MetricsSpec),
        description="Metrics endpoint of each rank.",
    )
    slo: SloSpec = Field(
        default_factory=SloSpec,
        json_schema_extra=_defaulted(SloSpec),
        description="Latency and throughput targets.",
    )
    # No CRD default: an absent block stays absent in stored objects.
    failure_policy: FailurePolicy = Field(
        default_factory=FailurePolicy,
        description="Restart limits and hang detection of the gangs. Default: restart without"
        " limit, no hang detection.",
    )

    # A field validator (engine comes after worker, so worker is in info.data): its errors name
    # spec.engine, where a model validator's would name no field.
    @field_validator("engine")
    @classmethod
    def _engine_owns_the_command(cls, engine: EngineSpec, info: ValidationInfo) -> EngineSpec:
        worker = info.data.get("worker")
        command = worker.command if isinstance(worker, WorkerSpec) else None
        args = worker.args if isinstance(worker, WorkerSpec) else None
        if engine.rendered and (command or args):
            raise ValueError(
                f"engine.name {engine.name.value} renders the rank command from the plan:"
                " leave worker.command and worker.args out and put extra engine arguments in"
                " engine.args"
            )
        if not engine.rendered and (engine.args or engine.port is not None):
            raise ValueError(
                f"engine.args and engine.port apply to vllm and sglang, not"
                f" {engine.name.value}: use worker.command and worker.args"
            )
        if engine.name is EngineName.CUSTOM and not command and isinstance(worker, WorkerSpec):
            raise ValueError("engine.name custom runs worker.command: give it")
        return engine

    @property
    def metrics_profile(self) -> MetricsProfile:
        """The names to read: a rendered engine's own, else spec.metrics.profile."""
        if self.engine.name is EngineName.VLLM:
            return MetricsProfile.VLLM
        if self.engine.name is EngineName.SGLANG:
            return MetricsProfile.SGLANG
        return self.metrics.profile

    @property
    def gpus_required(self) -> int:
        return self.replicas * self.parallelism.world_size
