"""What vLLM and SGLang render and refuse alike, each in its own spelling.

Both take the model's and the KV cache's types, the memory fraction, the revision and the
expert degree the same way, both default ``--quantization fp8`` and ``--served-model-name``
unless engine.args gives them, and both refuse the same settings; only the flag names, the
type names and the words of the messages differ. Each engine module keeps those in a
`Dialect`, and this module does the rest once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from paraserve.api import Dtype, InferenceDeploymentSpec
from paraserve.api.expert_parallel import UnsupportedExpertParallelism, engine_expert_args
from paraserve.engines.options import Owned, Rendered, find
from paraserve.engines.weights import model_revision


@dataclass(frozen=True)
class Dialect:
    """One engine's names for the options and types both engines render the same way."""

    engine: str  # its name in api.expert_parallel
    title: str  # its name in messages
    underscores: bool  # its parser reads ``--a_b`` as ``--a-b``
    exact: frozenset[str]  # its options that are a prefix of an owned one
    weight_dtypes: Mapping[Dtype, str]
    kv_dtypes: Mapping[Dtype, str]
    quantization_methods: str  # a few of its --quantization values, for the message
    kv_cache_types: str  # its --kv-cache-dtype values, for the message
    dtype: Owned
    kv_dtype: Owned
    memory: Owned
    revision: Owned
    expert: Owned
    # The user's own choice, rendered only when engine.args leaves it out.
    quantization: Owned
    served_name: Owned

    def given(self, spec: InferenceDeploymentSpec, owned: Owned) -> bool:
        """engine.args sets ``owned`` in a spelling this engine reads."""
        return bool(find(spec.engine.args, [owned], underscores=self.underscores, exact=self.exact))

    def kv_cache_dtype(self, spec: InferenceDeploymentSpec) -> str | None:
        """The engine's name for the KV-cache type; None when it has none (float32 under a
        narrower model dtype)."""
        kv, weights = spec.model.kv_dtype, spec.model.dtype
        if kv == weights and kv in self.weight_dtypes:
            return "auto"  # the model's own type
        return self.kv_dtypes.get(kv)

    def setting_problems(self, spec: InferenceDeploymentSpec) -> list[str]:
        """Settings of the spec the engine cannot honour, one line each."""
        problems = []
        dtype = spec.model.dtype
        if dtype in (Dtype.INT8, Dtype.INT4) and not self.given(spec, self.quantization):
            problems.append(
                f"model.dtype {dtype.value} is a quantized checkpoint: {self.title} has no"
                f" {self.dtype.flag} {dtype.value}; name its method in engine.args"
                f" ({self.quantization.flag} {self.quantization_methods})"
            )
        if self.kv_cache_dtype(spec) is None:
            problems.append(
                f"model.kvCacheDtype {spec.model.kv_dtype.value} with model.dtype {dtype.value}:"
                f" {self.title}'s {self.kv_dtype.flag} has no such type ({self.kv_cache_types})"
            )
        try:
            engine_expert_args(self.engine, spec.parallelism)
        except UnsupportedExpertParallelism as error:
            problems.append(str(error))
        return problems

    def storage_options(self, spec: InferenceDeploymentSpec) -> list[Rendered]:
        """The weights' and the KV cache's types, and the share of memory the engine takes."""
        rendered = []
        if spec.model.dtype in self.weight_dtypes:
            rendered.append(Rendered(self.dtype, self.weight_dtypes[spec.model.dtype]))
        if (kv := self.kv_cache_dtype(spec)) is not None:
            rendered.append(Rendered(self.kv_dtype, kv))
        rendered.append(Rendered(self.memory, f"{spec.gpu.max_memory_utilization:g}"))
        return rendered

    def revision_options(self, spec: InferenceDeploymentSpec) -> list[Rendered]:
        """The Hugging Face revision, when the source names one."""
        revision = model_revision(spec)
        return [] if revision is None else [Rendered(self.revision, revision)]

    def expert_options(self, spec: InferenceDeploymentSpec) -> list[Rendered]:
        """parallelism.expert as this engine spells it (api.expert_parallel); none if it cannot."""
        try:
            flags = engine_expert_args(self.engine, spec.parallelism)
        except UnsupportedExpertParallelism:
            return []  # refused in setting_problems
        return [Rendered(self.expert, flags[1] if len(flags) > 1 else None)] if flags else []

    def args(
        self, spec: InferenceDeploymentSpec, model: list[str], options: Iterable[Rendered]
    ) -> list[str]:
        """The model's arguments, the plan's options, the defaults engine.args leaves out, then
        engine.args."""
        out = list(model)
        for option in options:
            out += option.argv()
        if spec.model.dtype is Dtype.FLOAT8 and not self.given(spec, self.quantization):
            out += [self.quantization.flag, "fp8"]  # the engine quantizes 16-bit weights on load
        if not self.given(spec, self.served_name):
            out += [self.served_name.flag, spec.model.name]  # clients ask for model.name
        return out + list(spec.engine.args)
