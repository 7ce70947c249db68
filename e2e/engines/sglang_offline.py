"""Run rendered SGLang argvs through SGLang's own server-args parsing and resolution, offline.

Runs in the SGLang environment (imports SGLang, nothing of paraserve): reads a JSON list of
cases ``{"id", "argv"}`` on stdin (``argv`` starts with ``python3 -m sglang.launch_server``) and
prints one JSON object with a result per case. Each case goes the way `launch_server` takes it:
``prepare_server_args`` (SGLang's parser), ``resolve_once`` and ``check_server_args`` (its
resolution and validation), ``publish``, then ``_calculate_rank_ranges`` — the pipeline and
tensor ranks SGLang itself gives this node. ``--device cpu`` is appended (SGLang resolves its
accelerator and there is none here). ``"parse": true`` cases are only parsed, and report the
value parsed for the destination of ``flag``; ``{"options": true}`` maps every option string to
its destination.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
from typing import Any


def main() -> int:
    cases = json.load(sys.stdin)
    started = time.monotonic()
    from sglang.srt.entrypoints.engine import _calculate_rank_ranges
    from sglang.srt.runtime_context import get_parallel, publish
    from sglang.srt.server_args import ServerArgs, prepare_server_args

    parser = argparse.ArgumentParser(prog="sglang serve")
    ServerArgs.add_cli_args(parser)
    actions = parser._option_string_actions
    imported = time.monotonic() - started
    logging.disable(logging.WARNING)
    results: list[dict[str, Any]] = []
    for case in cases:
        if case.get("options"):
            options = {name: action.dest for name, action in sorted(actions.items())}
            results.append({"id": case["id"], "ok": True, "options": options})
            continue
        args = case["argv"][3:]
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                if case.get("parse"):
                    namespace = parser.parse_args(args)
                    dest = actions[case["flag"]].dest
                    value = getattr(namespace, dest, None)
                    results.append({"id": case["id"], "ok": True, "dest": dest, "value": value})
                    continue
                server_args = prepare_server_args([*args, "--device", "cpu"])
                server_args.resolve_once()
                server_args.check_server_args()
                publish(server_args, role="tokenizer")
                parallel = get_parallel()
                pp_ranks, tp_ranks, _, _ = _calculate_rank_ranges(parallel.node_rank)
            results.append(
                {
                    "id": case["id"],
                    "ok": True,
                    "tensor": parallel.tp_size,
                    "pipeline": parallel.pp_size,
                    "nnodes": parallel.nnodes,
                    "node_rank": parallel.node_rank,
                    "dist_init_addr": parallel.dist_init_addr,
                    "pp_ranks": list(pp_ranks),
                    "tp_ranks": list(tp_ranks),
                    "host": server_args.host,
                    "port": server_args.port,
                    "enable_metrics": server_args.enable_metrics,
                    "max_running_requests": server_args.max_running_requests,
                    "context_length": server_args.context_length,
                    "dtype": server_args.dtype,
                    "kv_cache_dtype": server_args.kv_cache_dtype,
                    "mem_fraction_static": server_args.mem_fraction_static,
                    "served_model_name": server_args.served_model_name,
                    "model_path": server_args.model_path,
                    "enable_layernorm_sp": server_args.enable_layernorm_sp,
                    "random_seed": server_args.random_seed,
                }
            )
        except (Exception, SystemExit) as error:  # every failure is a result
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            said = lines[-1] if isinstance(error, SystemExit) and lines else str(error)
            message = " ".join(f"{type(error).__name__}: {said}".split())
            results.append({"id": case["id"], "ok": False, "error": message[:500]})
    json.dump(
        {"import_seconds": imported, "seconds": time.monotonic() - started, "results": results},
        sys.stdout,
        default=str,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
