"""Run rendered `vllm serve` argvs through vLLM's own parser and `create_engine_config`, offline.

Runs in the vLLM environment (imports vLLM, nothing of paraserve): reads a JSON list of cases
``{"id", "argv"}`` on stdin (``argv`` starts with ``vllm serve``) and prints one JSON list of
results: the parallel layout vLLM derived, or the error it raised. A case with ``"parse": true``
is only parsed, and reports the value parsed for the destination of the option ``flag``.
``{"options": true}`` maps every option string of the serve parser to its destination.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
from typing import Any

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def _parser() -> tuple[Any, Any]:
    import vllm.entrypoints.cli.serve as serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    (command,) = serve.cmd_init()
    sub = command.subparser_init(subparsers)
    return parser, (command, sub)


class _ParseError(Exception):
    pass


def _parse(parser: Any, argv: list[str]) -> Any:
    # argparse reports a bad argument by printing and exiting: turn that into an error.
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return parser.parse_args(argv[1:])
        except SystemExit as exit_:
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            raise _ParseError(lines[-1] if lines else f"exit {exit_.code}") from None


def _layout(args: Any) -> dict[str, Any]:
    import vllm
    from vllm.usage.usage_lib import UsageContext

    if getattr(args, "model_tag", None) is not None:
        args.model = args.model_tag
    engine_args = vllm.AsyncEngineArgs.from_cli_args(args)
    config = engine_args.create_engine_config(
        usage_context=UsageContext.OPENAI_API_SERVER, headless=args.headless
    )
    p, m, s, c = (
        config.parallel_config,
        config.model_config,
        config.scheduler_config,
        config.cache_config,
    )
    return {
        "world_size": p.world_size,
        "tensor": p.tensor_parallel_size,
        "pipeline": p.pipeline_parallel_size,
        "nnodes": p.nnodes,
        "node_rank": p.node_rank,
        "master_addr": p.master_addr,
        "master_port": p.master_port,
        "backend": str(p.distributed_executor_backend),
        "headless": bool(args.headless),
        "host": args.host,
        "port": args.port,
        "max_num_seqs": s.max_num_seqs,
        "max_model_len": m.max_model_len,
        "dtype": str(m.dtype).removeprefix("torch."),
        "kv_cache_dtype": c.cache_dtype,
        "gpu_memory_utilization": c.gpu_memory_utilization,
        "served_model_name": m.served_model_name,
        "model": m.model,
        "enforce_eager": m.enforce_eager,
        "seed": m.seed,
    }


def main() -> int:
    cases = json.load(sys.stdin)
    started = time.monotonic()
    parser, (command, serve_parser) = _parser()
    imported = time.monotonic() - started
    logging.disable(logging.WARNING)
    results = []
    for case in cases:
        if case.get("options"):
            actions = serve_parser._option_string_actions
            options = {name: action.dest for name, action in sorted(actions.items())}
            results.append({"id": case["id"], "ok": True, "options": options})
            continue
        try:
            args = _parse(parser, case["argv"])
            if case.get("parse"):
                dest = serve_parser._option_string_actions[case["flag"]].dest
                value = getattr(args, dest, None)
                results.append({"id": case["id"], "ok": True, "dest": dest, "value": value})
                continue
            command.validate(args)
            results.append({"id": case["id"], "ok": True, **_layout(args)})
        except Exception as error:  # every failure is a result, not the end of the run
            message = " ".join(f"{type(error).__name__}: {error}".split())
            results.append({"id": case["id"], "ok": False, "error": message[:500]})
    json.dump(
        {"import_seconds": imported, "seconds": time.monotonic() - started, "results": results},
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
