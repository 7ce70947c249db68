"""Each rank's vLLM and SGLang command from the plan, and what the renderer refuses."""

from __future__ import annotations

from typing import Any

import pytest

from paraserve.api import InferenceDeploymentSpec
from paraserve.api.rank_env import RankEnv, parse_rank_env, rank_environ
from paraserve.engines import (
    ENGINE_ARGUMENT_CONFLICT,
    ENGINE_SETTING_UNSUPPORTED,
    MODEL_MOUNT,
    SEQUENCE_PARALLEL_UNSUPPORTED,
    command,
    default_image,
    model_env,
    model_volumes,
    problems,
)
from paraserve.engines.options import Owned, find, matches

HEAD = "llama-0-0.llama.default.svc"
LLAMA = {
    "name": "meta-llama/Llama-3.1-8B",
    "architecture": {
        "numLayers": 32,
        "hiddenSize": 4096,
        "numAttentionHeads": 32,
        "numKeyValueHeads": 8,
        "intermediateSize": 14336,
        "vocabSize": 128256,
    },
}


def spec(name: str, pipeline: int = 1, tensor: int = 1, **fields: Any) -> InferenceDeploymentSpec:
    document: dict[str, Any] = {
        "model": LLAMA,
        "parallelism": {"pipeline": pipeline, "tensor": tensor},
        "serving": {"maxBatchSize": 16, "maxSequenceLength": 8192},
        "engine": {"name": name},
    }
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    return InferenceDeploymentSpec.model_validate(document)


def rank_env(s: InferenceDeploymentSpec, rank: int) -> RankEnv:
    environ = rank_environ(s.parallelism, rank, num_layers=None, master_addr=HEAD)
    return parse_rank_env(environ)


def argvs(s: InferenceDeploymentSpec) -> list[list[str]]:
    out = []
    for rank in range(s.parallelism.world_size):
        rendered = command(s, rank_env(s, rank))
        assert rendered is not None
        out.append(rendered.argv)
    return out


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def messages(s: InferenceDeploymentSpec, code: str) -> list[str]:
    return [c.message for c in problems(s) if c.code == code]


# -- vLLM -----------------------------------------------------------------------------------


def test_vllm_ranks_are_nodes_of_one_gpu_each() -> None:
    s = spec("vllm", pipeline=2, tensor=2)
    every = argvs(s)
    assert [a[:3] for a in every] == [["vllm", "serve", LLAMA["name"]]] * 4
    for k, argv in enumerate(every):
        assert value(argv, "--tensor-parallel-size") == "2"
        assert value(argv, "--pipeline-parallel-size") == "2"
        assert value(argv, "--nnodes") == "4"
        assert value(argv, "--node-rank") == str(k)
        assert value(argv, "--master-addr") == HEAD
        assert value(argv, "--master-port") == "29500"
        assert value(argv, "--distributed-executor-backend") == "mp"
        assert ("--headless" in argv) == (k > 0)
    assert problems(s) == []


def test_vllm_serving_limits_are_its_own_flags() -> None:
    s = spec("vllm", tensor=2, gpu={"maxMemoryUtilization": 0.9})
    (head, _) = argvs(s)
    assert value(head, "--max-num-seqs") == "16"
    assert value(head, "--max-model-len") == "8192"
    assert value(head, "--dtype") == "bfloat16"
    assert value(head, "--kv-cache-dtype") == "auto"
    assert value(head, "--gpu-memory-utilization") == "0.9"
    assert value(head, "--port") == "8000" and value(head, "--host") == "0.0.0.0"
    assert value(head, "--served-model-name") == LLAMA["name"]


def test_one_rank_has_no_multi_node_backend() -> None:
    (argv,) = argvs(spec("vllm"))
    assert value(argv, "--nnodes") == "1" and "--distributed-executor-backend" not in argv


def test_vllm_float8_is_quantized_on_load_and_its_cache_is_fp8() -> None:
    (argv,) = argvs(spec("vllm", model={"dtype": "float8"}))
    assert "--dtype" not in argv
    assert value(argv, "--quantization") == "fp8"
    assert value(argv, "--kv-cache-dtype") == "fp8"


def test_vllm_int4_needs_the_checkpoints_quantization() -> None:
    s = spec("vllm", model={"dtype": "int4", "kvCacheDtype": "float16"})
    (message,) = messages(s, ENGINE_SETTING_UNSUPPORTED)
    assert "--quantization" in message
    ok = spec(
        "vllm",
        model={"dtype": "int4", "kvCacheDtype": "float16"},
        engine={"args": ["--quantization", "awq"]},
    )
    assert problems(ok) == []
    (argv,) = argvs(ok)
    assert argv.count("--quantization") == 1 and value(argv, "--kv-cache-dtype") == "float16"


def test_a_float32_cache_under_bfloat16_weights_is_refused() -> None:
    (message,) = messages(
        spec("vllm", model={"kvCacheDtype": "float32"}), ENGINE_SETTING_UNSUPPORTED
    )
    assert "float32" in message and "bfloat16" in message


def test_extra_args_come_last_and_user_served_name_wins() -> None:
    s = spec("vllm", engine={"args": ["--enforce-eager", "--served-model-name", "llama"]})
    (argv,) = argvs(s)
    assert argv[-3:] == ["--enforce-eager", "--served-model-name", "llama"]
    assert argv.count("--served-model-name") == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--tensor-parallel-size", "4"],
            "engine.args '--tensor-parallel-size 4' contradicts parallelism.tensor: the operator"
            " renders '--tensor-parallel-size 2'",
        ),
        (["-tp=4"], "'-tp=4' contradicts parallelism.tensor"),
        (["--tensor_parallel_size", "4"], "contradicts parallelism.tensor"),
        (["--tensor-parallel", "4"], "contradicts parallelism.tensor"),
        (
            ["--nnodes", "2"],
            "engine.args '--nnodes 2' repeats '--nnodes 2', which the operator renders from the"
            " replica's ranks (pipeline × tensor, one GPU per pod): leave it out",
        ),
        (["--node-rank", "1"], "the operator sets --node-rank per rank, from the pod's RANK"),
        (["--headless"], "the operator sets --headless per rank"),
        (["-dp", "2"], "contradicts replicas"),
        (["-pcp", "2"], "prefill context parallelism adds ranks"),
        (["--port=9000"], "contradicts engine.port: the operator renders '--port 8000'"),
        (["--model", "other"], "contradicts model.source / model.name"),
        (["--max-num-seqs", "64"], "contradicts serving.maxBatchSize"),
        (["--gpu-memory-utilization", "0.5"], "contradicts gpu.maxMemoryUtilization"),
    ],
)
def test_vllm_refuses_extra_args_that_contradict_the_plan(args: list[str], expected: str) -> None:
    s = spec("vllm", tensor=2, engine={"args": args})
    (message,) = messages(s, ENGINE_ARGUMENT_CONFLICT)
    assert expected in message


def test_args_the_plan_does_not_decide_pass() -> None:
    args = ["--enforce-eager", "-dcp", "2", "--model-impl", "vllm", "--seed=3", "--swap-space", "4"]
    assert problems(spec("vllm", tensor=2, engine={"args": args})) == []


def test_every_conflict_is_reported() -> None:
    s = spec("vllm", tensor=2, engine={"args": ["-tp", "4", "--nnodes", "3"]})
    assert len(messages(s, ENGINE_ARGUMENT_CONFLICT)) == 2


def test_vllm_has_no_megatron_sequence_parallelism() -> None:
    s = spec("vllm", tensor=2, parallelism={"sequence": 2})
    (message,) = messages(s, SEQUENCE_PARALLEL_UNSUPPORTED)
    assert "parallelism.sequence 2" in message and "set sequence: 1" in message


# -- SGLang ---------------------------------------------------------------------------------


def test_sglang_ranks_meet_at_the_head() -> None:
    s = spec("sglang", pipeline=2, tensor=4)
    every = argvs(s)
    for k, argv in enumerate(every):
        assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
        assert value(argv, "--model-path") == LLAMA["name"]
        assert value(argv, "--tp-size") == "4" and value(argv, "--pp-size") == "2"
        assert value(argv, "--nnodes") == "8" and value(argv, "--node-rank") == str(k)
        assert value(argv, "--dist-init-addr") == f"{HEAD}:29500"
        assert "--enable-metrics" in argv
        assert value(argv, "--max-running-requests") == "16"
        assert value(argv, "--context-length") == "8192"
        assert value(argv, "--mem-fraction-static") == "0.85"
        assert value(argv, "--port") == "30000"
    assert problems(s) == []


def test_sglang_maps_sequence_parallelism_to_layernorm_sp() -> None:
    s = spec("sglang", tensor=4, parallelism={"sequence": 4})
    assert problems(s) == []
    assert all("--enable-layernorm-sp" in argv for argv in argvs(s))
    with_pp = spec("sglang", pipeline=2, tensor=4, parallelism={"sequence": 4})
    (message,) = messages(with_pp, SEQUENCE_PARALLEL_UNSUPPORTED)
    assert "pipeline" in message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tp-size", "4"], "contradicts parallelism.tensor"),
        (["--tensor-parallel-size=8"], "contradicts parallelism.tensor"),
        (["--dist-init-addr", "10.0.0.1:5000"], "contradicts the head's stable DNS name"),
        (["--nnodes", "2"], "repeats '--nnodes 2'"),
        (["--enable-metrics"], "repeats '--enable-metrics'"),
        (["--dp-size", "2"], "contradicts replicas"),
    ],
)
def test_sglang_refuses_extra_args_that_contradict_the_plan(args: list[str], expected: str) -> None:
    (message,) = messages(spec("sglang", tensor=2, engine={"args": args}), ENGINE_ARGUMENT_CONFLICT)
    assert expected in message


def test_sglang_int8_kv_cache_is_refused() -> None:
    s = spec("sglang", model={"kvCacheDtype": "int8"})
    assert messages(s, ENGINE_SETTING_UNSUPPORTED)


# -- what is not rendered -------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["paraserve", "custom"])
def test_other_engines_are_not_rendered(engine: str) -> None:
    fields: dict[str, Any] = {"worker": {"command": ["serve"]}} if engine == "custom" else {}
    s = spec(engine, **fields)
    assert command(s, rank_env(s, 0)) is None and problems(s) == [] and default_image(s) is None


def test_default_images_are_the_engines_own() -> None:
    assert default_image(spec("vllm")) == "vllm/vllm-openai:v0.32.0"
    assert default_image(spec("sglang")) == "lmsysorg/sglang:v0.5.23"


# -- weights --------------------------------------------------------------------------------


def test_a_claim_is_mounted_read_only_and_is_the_model_argument() -> None:
    source = {"persistentVolumeClaim": {"claimName": "weights", "path": "llama/8b"}}
    s = spec("vllm", model={"source": source})
    (argv,) = argvs(s)
    assert argv[2] == f"{MODEL_MOUNT}/llama/8b"
    volumes, mounts = model_volumes(s)
    assert volumes == [
        {"name": "weights", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}}
    ]
    assert mounts == [{"name": "weights", "mountPath": MODEL_MOUNT, "readOnly": True}]
    assert model_env(s) == []


def test_a_hugging_face_source_downloads_into_its_cache_with_the_token() -> None:
    source = {
        "huggingFace": {
            "id": "org/model",
            "revision": "main",
            "tokenSecret": {"name": "hf", "key": "t"},
            "cache": {"sizeLimit": "50Gi"},
        }
    }
    s = spec("sglang", model={"source": source})
    (argv,) = argvs(s)
    assert value(argv, "--model-path") == "org/model" and value(argv, "--revision") == "main"
    volumes, mounts = model_volumes(s)
    assert volumes == [{"name": "hf-cache", "emptyDir": {"sizeLimit": str(50 * 2**30)}}]
    assert mounts[0]["mountPath"] == "/var/cache/huggingface"
    assert model_env(s)[1] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}},
    }


# -- the option matcher ---------------------------------------------------------------------

TP = Owned(("--tensor-parallel-size", "-tp"), "parallelism.tensor")


@pytest.mark.parametrize(
    ("name", "hit"),
    [
        ("--tensor-parallel-size", True),
        ("-tp", True),
        ("--tensor", True),
        ("--t", False),  # too short to be taken for it
        ("--tensor-parallel-size-x", False),
        ("-t", True),  # argparse expands short prefixes too
        ("-", False),
    ],
)
def test_matches(name: str, hit: bool) -> None:
    assert matches(name, TP, frozenset()) is hit


def test_an_exact_other_option_is_not_an_abbreviation() -> None:
    model = Owned(("--model-path",), "model")
    assert not matches("--model", model, frozenset({"--model"}))


def test_find_reads_the_value_the_engine_would() -> None:
    (hit,) = find(["--seed", "1", "-tp", "-3"], [TP])
    assert hit.text == "-tp -3" and hit.value == "-3"  # argparse reads a negative number
    (hit,) = find(["-tp", "--seed", "1"], [TP])
    assert hit.text == "-tp" and hit.value is None
    (hit,) = find(["--tensor_parallel_size=4"], [TP], underscores=True)
    assert hit.value == "4"
    assert find(["--tensor_parallel_size=4"], [TP]) == []


# -- expert parallelism (api.expert_parallel) -----------------------------------------------

MIXTRAL = {
    "name": "mistralai/Mixtral-8x7B-v0.1",
    "parameters": "46.7B",
    "architecture": {"numLayers": 32, "numAttentionHeads": 32, "numKeyValueHeads": 8},
}


def test_vllm_expert_parallelism_is_tensor_wide() -> None:
    s = spec("vllm", tensor=4, model=MIXTRAL, parallelism={"expert": 4})
    assert problems(s) == []
    assert all("--enable-expert-parallel" in argv for argv in argvs(s))
    narrower = spec("vllm", tensor=4, model=MIXTRAL, parallelism={"expert": 2})
    (message,) = messages(narrower, ENGINE_SETTING_UNSUPPORTED)
    assert "EP = TP" in message


def test_sglang_expert_parallelism_is_its_ep_size() -> None:
    s = spec("sglang", tensor=4, model=MIXTRAL, parallelism={"expert": 2})
    assert problems(s) == []
    assert all(value(argv, "--ep-size") == "2" for argv in argvs(s))
    clash = spec(
        "sglang", tensor=4, model=MIXTRAL, parallelism={"expert": 2}, engine={"args": ["--ep", "4"]}
    )
    (message,) = messages(clash, ENGINE_ARGUMENT_CONFLICT)
    assert "contradicts parallelism.expert: the operator renders '--ep-size 2'" in message
