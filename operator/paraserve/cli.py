"""The ``paraserve`` command: argument parsing only; each subcommand registers itself.

To add a subcommand, write ``register_<name>(subcommands)`` that adds a parser and sets
``run`` to a function of the parsed arguments returning the exit status, and list it in
``COMMANDS``. Imports happen inside ``run`` so ``paraserve plan`` never loads kopf or torch;
and ``paraserve NAME …`` registers NAME alone (the operator's and worker's flags import
modules of their own, logging among them: 15 ms of `plan`'s start).
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK, EXIT_INFEASIBLE, EXIT_BAD_INPUT = 0, 1, 2

Subcommands = Any  # argparse's _SubParsersAction, which is private


class BadInput(Exception):
    """Input the command cannot use: exit 2 with this one line on stderr."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def register_plan(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "plan",
        help="check a deployment against a node pool, offline",
        description="Plan an InferenceDeployment against the nodes and pods of a cluster."
        " Exit 0 when feasible, 1 when not, 2 on bad input.",
    )
    parser.add_argument(
        "-f", "--filename", required=True, metavar="DEPLOYMENT.yaml",
        help="the InferenceDeployment ('-' for stdin)",
    )  # fmt: skip
    parser.add_argument(
        "--nodes", required=True, metavar="NODES.yaml",
        help="output of `kubectl get nodes,pods -A -o yaml`, or a stream of Node and Pod documents",
    )  # fmt: skip
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    parser.add_argument(
        "--config-maps", metavar="CONFIGMAPS.yaml",
        help="ConfigMaps that model.architectureFrom may name (`kubectl get configmap NAME"
        " -o yaml`, a List, or a stream)",
    )  # fmt: skip
    parser.add_argument(
        "--suggest", action="store_true",
        help="also list every strategy (PP, TP, SP) that fits the pool, best first"
        " (the text report of an infeasible plan always does)",
    )  # fmt: skip
    parser.set_defaults(run=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    # A short run that makes a great many objects that live to its end (the pool file's dicts
    # and lists, the API models): the cycle collector would walk them again and again, to free
    # next to nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _plan(args)
    finally:
        if collecting:
            gc.enable()


def _plan(args: argparse.Namespace) -> int:
    import json

    from paraserve.api import DocumentError, load_deployment, load_nodes_and_pods
    from paraserve.engines import with_engine_checks
    from paraserve.planner import Pool, plan, suggest, suggest_more_nodes
    from paraserve.planner.report import render, render_suggestions

    if args.filename == "-" and args.nodes == "-":
        raise BadInput("-f and --nodes cannot both be '-' (stdin holds one of them)")
    try:
        deployment = load_deployment(_read(args.filename), args.filename)
        nodes, pods = load_nodes_and_pods(_read(args.nodes), args.nodes)
    except DocumentError as error:
        raise BadInput(str(error)) from None
    if deployment.spec.model.architecture_from is not None:
        deployment = _resolve_architecture(deployment, args.config_maps)
    pool = Pool.from_objects(nodes, pods, deployment.spec)
    verdict = with_engine_checks(plan(deployment.spec, pool), deployment.spec)
    # A person reading a rejection wants the way out; JSON stays the documented object unless asked.
    wanted = args.suggest or (args.output == "text" and not verdict.feasible)
    options = suggest(deployment.spec, pool) if wanted else None
    # Nothing fits: say what would, on more nodes like the pool's largest.
    more = suggest_more_nodes(deployment.spec, pool) if options == [] else None
    if args.output == "json":
        document = verdict.to_json()
        if options is not None:
            document["suggestions"] = [s.model_dump(mode="json", by_alias=True) for s in options]
        if more is not None:
            document["moreNodes"] = more.model_dump(mode="json", by_alias=True)
        print(json.dumps(document, ensure_ascii=False))
    else:
        sys.stdout.write(render(deployment, verdict))
        if options is not None:
            parallelism = deployment.spec.parallelism
            sys.stdout.write("\n" + render_suggestions(options, parallelism, more))
    return EXIT_OK if verdict.feasible else EXIT_INFEASIBLE


def _resolve_architecture(deployment: Any, path: str | None) -> Any:
    """The deployment with model.architectureFrom read from the ConfigMaps of ``path``."""
    from paraserve.api import DocumentError, parse_documents
    from paraserve.planner import ConfigError, resolve_architecture

    source = deployment.spec.model.architecture_from
    assert source is not None
    name = source.config_map_key_ref.name
    if path is None:
        raise BadInput(
            f"model.architectureFrom names ConfigMap {name!r}: pass it with --config-maps FILE"
            f" (kubectl get configmap {name} -o yaml)"
        )
    try:
        documents = parse_documents(_read(path), path)
    except DocumentError as error:
        raise BadInput(str(error)) from None
    items: list[Any] = []
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "List":
            items += document.get("items") or []
        else:
            items.append(document)
    data = next(
        (
            item.get("data") or {}
            for item in items
            if isinstance(item, dict)
            and item.get("kind") == "ConfigMap"
            and (item.get("metadata") or {}).get("name") == name
        ),
        None,
    )
    try:
        spec = resolve_architecture(deployment.spec, data)
    except ConfigError as error:
        raise BadInput(f"{path}: {error}") from None
    return deployment.model_copy(update={"spec": spec})


def register_architecture(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "architecture",
        help="turn a Hugging Face config.json into the model.architecture block",
        description="Print the model.architecture block of an InferenceDeployment for the model"
        " a Hugging Face config.json describes. Exit 2 when the file cannot be read or its"
        " model_type is not supported.",
    )
    parser.add_argument(
        "config", metavar="CONFIG.json", help="the model's config.json ('-' for stdin)"
    )
    parser.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    parser.set_defaults(run=run_architecture)


def run_architecture(args: argparse.Namespace) -> int:
    import json

    import yaml

    from paraserve.api import format_bytes, format_count
    from paraserve.planner.huggingface import ConfigError, architecture_from_text
    from paraserve.planner.weights import parameter_count

    source = "stdin" if args.config == "-" else args.config
    try:
        architecture = architecture_from_text(_read(args.config), source)
    except ConfigError as error:
        raise BadInput(str(error)) from None
    block = architecture.to_wire()
    if args.output == "json":
        print(json.dumps(block, ensure_ascii=False))
        return EXIT_OK
    count = parameter_count(architecture)
    modules = architecture.multi_token_prediction_layers
    mtp = (
        f"; its {modules} multi-token-prediction module{'s' if modules != 1 else ''} add"
        f"{'s' if modules == 1 else ''} {format_count(count.multi_token_prediction)}"
        if count.multi_token_prediction
        else ""
    )
    sys.stdout.write(
        f"# model.architecture from {source}: {format_count(count.total)} parameters,"
        f" {format_count(count.active)} active per token{mtp};"
        f" checkpoint weights {format_bytes(count.checkpoint_bytes)}\n"
        + yaml.safe_dump(block, sort_keys=False, default_flow_style=None, width=100)
    )
    return EXIT_OK


def register_crd(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "crd",
        help="print the InferenceDeployment CRD (generated from paraserve.api)",
        description="Print the CustomResourceDefinition YAML; `kubectl apply -f -` takes it.",
    )
    parser.set_defaults(run=run_crd)


def run_crd(args: argparse.Namespace) -> int:
    from paraserve.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return EXIT_OK


def register_worker(subcommands: Subcommands) -> None:
    from paraserve.worker.worker_flags import register  # argparse only; torch loads when it runs

    register(subcommands)


def register_operator(subcommands: Subcommands) -> None:
    from paraserve.controller.running.operator_flags import (
        register,  # argparse only; kopf loads when it runs
    )

    register(subcommands)


#: One entry per subcommand, by its name; adding one is adding a register function here.
COMMANDS: dict[str, Callable[[Subcommands], None]] = {
    "plan": register_plan,
    "architecture": register_architecture,
    "crd": register_crd,
    "worker": register_worker,
    "operator": register_operator,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; of ``command`` alone when that names one."""
    from paraserve import __version__

    parser = _Parser(
        prog="paraserve",
        description="Plan, deploy and measure pipeline/tensor/sequence-parallel LLM inference.",
    )
    parser.add_argument("--version", action="version", version=f"paraserve {__version__}")
    subcommands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for register in [COMMANDS[command]] if command in COMMANDS else COMMANDS.values():
        register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(arguments[0] if arguments else None).parse_args(arguments)
    try:
        return int(args.run(args))
    except BadInput as error:
        print(f"paraserve {args.command}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK  # `paraserve plan … | head` is not an error


def _read(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise BadInput(f"cannot read {path}: {reason}") from None


if __name__ == "__main__":
    sys.exit(main())
