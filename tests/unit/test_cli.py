"""`paraserve`: exit 0/1/2, one clear line on stderr for bad input, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from paraserve.cli import COMMANDS, build_parser, main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NODES = EXAMPLES / "nodes-1x8-a100-80g.yaml"
GOOD = EXAMPLES / "review-pp4-tp2-sp2.yaml"


def deployment(**spec_changes: object) -> dict[str, object]:
    document = yaml.safe_load(GOOD.read_text())
    document["spec"].update(spec_changes)
    return document


def plan_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, nodes: Path = NODES
) -> tuple[int, str, str]:
    path = tmp_path / "deployment.yaml"
    path.write_text(text)
    status = main(["plan", "-f", str(path), "--nodes", str(nodes)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


BAD_INPUT = {
    "not YAML": ("spec: [unclosed", "not valid YAML: did not find expected ',' or ']' at line 2"),
    "wrong kind": (
        yaml.safe_dump({**deployment(), "kind": "Deployment"}),
        "kind is 'Deployment'; expected 'InferenceDeployment'",
    ),
    "wrong apiVersion": (
        yaml.safe_dump({**deployment(), "apiVersion": "paraserve.dev/v1"}),
        "apiVersion is 'paraserve.dev/v1'; expected 'paraserve.dev/v1alpha1'",
    ),
    "a string where a number belongs": (
        yaml.safe_dump(deployment(parallelism={"pipeline": "four", "tensor": 2})),
        "spec.parallelism.pipeline: Input should be a valid integer",
    ),
    "a zero degree": (
        yaml.safe_dump(deployment(parallelism={"pipeline": 4, "tensor": 0})),
        "spec.parallelism.tensor: Input should be greater than or equal to 1",
    ),
    "an unknown field": (
        yaml.safe_dump({**deployment(), "spec": {**deployment()["spec"], "paralelism": {}}}),  # type: ignore[dict-item]
        "spec: unknown field 'paralelism'; did you mean 'parallelism'?",
    ),
    "a bad quantity": (
        yaml.safe_dump(deployment(gpu={"memory": "lots"})),
        "spec.gpu.memory: 'lots' is not a quantity of bytes",
    ),
    "a scalar document": ("just a string", "expected an InferenceDeployment object"),
    "two documents": (GOOD.read_text() + "\n---\n" + GOOD.read_text(), "found 2"),
    "an empty file": ("", "expected one InferenceDeployment document, found 0"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_deployment_exits_2_with_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, fragment = BAD_INPUT[case]
    status, out, err = plan_file(tmp_path, capsys, text)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("paraserve plan: ")
    assert fragment in err
    assert "Traceback" not in err


def test_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["plan", "-f", str(missing), "--nodes", str(NODES)]) == 2
    err = capsys.readouterr().err
    assert err == f"paraserve plan: cannot read {missing}: No such file or directory\n"
    assert main(["plan", "-f", str(tmp_path), "--nodes", str(NODES)]) == 2
    assert "Is a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("nodes_text", "fragment"),
    [
        ("apiVersion: v1\nkind: ConfigMap\n", "kind is 'ConfigMap'; expected Node or Pod"),
        ("kind: List\nitems: 3\n", "items is not a list"),
        ("- 1\n", "expected a Node or Pod object, got list"),
        ("{", "not valid YAML"),
    ],
)
def test_bad_nodes_file_exits_2(
    nodes_text: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(nodes_text)
    status, _, err = plan_file(tmp_path, capsys, GOOD.read_text(), nodes)
    assert status == 2 and err.count("\n") == 1 and fragment in err


def test_usage_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["plan", "-f", str(GOOD)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the following arguments are required: --nodes" in err


def test_nodes_as_a_multi_document_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = yaml.safe_load(NODES.read_text())["items"]
    gpu_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "busy"},
        "spec": {
            "nodeName": "gpu-node-0",
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": 2}}}],
        },
        "status": {"phase": "Running"},
    }
    stream = tmp_path / "stream.yaml"
    stream.write_text(yaml.safe_dump_all([*items, gpu_pod]))
    assert main(["plan", "-f", str(GOOD), "--nodes", str(stream), "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["gpusFree"] == 6 and document["schedulableNow"] is False
    assert [w["code"] for w in document["warnings"]] == ["InsufficientFreeGPUs"]


def test_json_is_exactly_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", str(GOOD), "--nodes", str(NODES), "-o", "json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert isinstance(json.loads(out), dict)


def test_stdin_is_accepted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(GOOD.read_bytes())))
    assert main(["plan", "-f", "-", "--nodes", str(NODES), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["feasible"] is True


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["-f", "-", "--nodes", str(NODES)], "cannot read -: 'utf-8' codec can't decode"),
        (["-f", str(GOOD), "--nodes", "-"], "cannot read -: 'utf-8' codec can't decode"),
        (["-f", "-", "--nodes", "-"], "-f and --nodes cannot both be '-'"),
    ],
)
def test_bad_stdin_exits_2_with_one_line(
    argv: list[str],
    fragment: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe kind: Node")))
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


def test_exact_example_plans(capsys: pytest.CaptureFixture[str]) -> None:
    exact = EXAMPLES / "llama-2-70b-exact.yaml"
    assert main(["plan", "-f", str(exact), "--nodes", str(NODES)]) == 0
    out = capsys.readouterr().out
    assert "exact memory model" in out and "KV cache" in out


def test_subcommands_register_themselves() -> None:
    parser = build_parser()
    assert len(COMMANDS) >= 2
    args = parser.parse_args(["crd"])
    assert args.command == "crd" and callable(args.run)


def test_plan_does_not_import_kopf_or_torch() -> None:
    code = (
        "import sys; from paraserve.cli import main; "
        f"status = main(['plan', '-f', {str(GOOD)!r}, '--nodes', {str(NODES)!r}, '-o', 'json']); "
        "heavy = [m for m in ('kopf', 'torch', 'kubernetes') if m in sys.modules]; "
        "print(status, heavy, file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stderr.strip() == "0 []"


def test_nodes_as_kubectl_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps(yaml.safe_load(NODES.read_text())))
    assert main(["plan", "-f", str(GOOD), "--nodes", str(nodes), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpusInPool"] == 8
    nodes.write_text('{"kind": "List", "items": [}')
    assert main(["plan", "-f", str(GOOD), "--nodes", str(nodes)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--metrics-port", "-5"], {}, "--metrics-port -5: a port is 0–65535"),
        (["--health-port", "70000"], {}, "--health-port 70000: a port is 0–65535"),
        (["--resync", "-1"], {}, "--resync -1: seconds must be > 0"),
        (["--unschedulable-timeout", "0"], {}, "--unschedulable-timeout 0: seconds must be > 0"),
        ([], {"PARASERVE_MEASURE_INTERVAL": "abc"}, "PARASERVE_MEASURE_INTERVAL='abc' is not"),
        ([], {"PARASERVE_MEASURE_CONCURRENCY": "0"}, "PARASERVE_MEASURE_CONCURRENCY='0': must be"),
    ],
)
def test_operator_bad_settings_exit_2_before_connecting(
    argv: list[str],
    environ: dict[str, str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    # A kubeconfig that cannot be read: reaching it would exit 1 with another message.
    assert main(["operator", "--kubeconfig", "/nonexistent", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_the_vllm_example_plans_and_a_contradicting_arg_is_infeasible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = EXAMPLES / "vllm-llama-3.1-8b-tp2.yaml"
    assert main(["plan", "-f", str(example), "--nodes", str(NODES)]) == 0
    document = yaml.safe_load(example.read_text())
    document["spec"]["engine"]["args"] += ["-tp", "4"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    capsys.readouterr()
    assert main(["plan", "-f", str(bad), "--nodes", str(NODES), "-o", "json"]) == 1
    (error,) = json.loads(capsys.readouterr().out)["errors"]
    assert error == {
        "code": "EngineArgumentConflict",
        "message": "engine.args '-tp 4' contradicts parallelism.tensor: the operator renders"
        " '--tensor-parallel-size 2'",
    }


def test_a_subcommand_named_first_is_the_only_one_registered(
    capsys: pytest.CaptureFixture[str],
) -> None:
    only = build_parser("plan")
    assert only.parse_args(["plan", "-f", "x", "--nodes", "y"]).run.__name__ == "run_plan"
    with pytest.raises(SystemExit):
        only.parse_args(["crd"])
    capsys.readouterr()
    # Without a subcommand first, --help lists them all.
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_plan_leaves_the_garbage_collector_as_it_found_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import gc

    assert gc.isenabled()
    assert main(["plan", "-f", str(GOOD), "--nodes", str(NODES), "-o", "json"]) == 0
    assert gc.isenabled()
    gc.disable()
    try:
        main(["plan", "-f", str(GOOD), "--nodes", str(NODES), "-o", "json"])
        assert not gc.isenabled()
    finally:
        gc.enable()
