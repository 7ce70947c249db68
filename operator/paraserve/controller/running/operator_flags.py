"""The `paraserve operator` command line: flags to options, then the runtime."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from paraserve.api import DEFAULT_WORKER_IMAGE
from paraserve.controller.admission import options as webhook_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--kubeconfig", default=None, help="default: in-cluster, else $KUBECONFIG")
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        default=[],
        metavar="NS",
        help="serve only this namespace (repeatable; kopf globs allowed); default: all",
    )
    parser.add_argument(
        "--worker-image",
        default=env("PARASERVE_WORKER_IMAGE", DEFAULT_WORKER_IMAGE),
        help="image of a rank when spec.worker.image is empty (env PARASERVE_WORKER_IMAGE; "
        f"default {DEFAULT_WORKER_IMAGE})",
    )
    parser.add_argument("--metrics-port", type=int, default=8000, help="0 disables /metrics")
    parser.add_argument("--metrics-address", default="0.0.0.0")
    parser.add_argument("--health-port", type=int, default=8080, help="/healthz; 0 disables")
    parser.add_argument("--health-address", default="0.0.0.0")
    parser.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="act only while holding a coordination.k8s.io Lease (default: on)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=env("POD_NAMESPACE", "default"),
        help="namespace of the Lease (env POD_NAMESPACE)",
    )
    parser.add_argument("--leader-election-id", default="paraserve-operator", help="Lease name")
    parser.add_argument(
        "--identity", default="", help="holder identity (default: $POD_NAME, else host-pid)"
    )
    parser.add_argument("--lease-duration", type=float, default=15.0)
    parser.add_argument("--renew-deadline", type=float, default=10.0)
    parser.add_argument("--retry-period", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=256, help="concurrent reconciles")
    parser.add_argument("--resync", type=float, default=60.0, help="seconds between resyncs")
    parser.add_argument(
        "--restart-backoff",
        type=float,
        default=5.0,
        help="seconds before a failed replica is first recreated; doubles per failure",
    )
    parser.add_argument("--restart-backoff-max", type=float, default=300.0)
    parser.add_argument(
        "--unschedulable-timeout",
        type=float,
        default=120.0,
        help="seconds a rank may stay unschedulable before its gang is recreated elsewhere",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=600.0,
        help="seconds a rank bound to a node may take to start (ContainerCreating: volumes,"
        " image pull) before its gang is recreated",
    )
    parser.add_argument("--log-format", choices=("json", "plain", "full"), default="json")
    parser.add_argument("-v", "--verbose", action="store_true")
    webhook_options.add_arguments(parser)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `operator` to the `paraserve` command's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "operator",
        help="run the operator (kopf) against the current cluster",
        description="Reconcile InferenceDeployments: plan, create rank pods, keep gangs, status.",
    )
    add_arguments(parser)
    parser.set_defaults(run=run_from_args)
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    # Imported here so that `paraserve plan` does not pay for kopf and the kubernetes client.
    from paraserve.controller.measurement.measure_loop import MeasureSettings
    from paraserve.controller.running.leader import LeaseTimings
    from paraserve.controller.running.operator_process import (
        OperatorOptions,
        controller_settings,
        run,
    )

    if args.workers < 1 or args.renew_deadline >= args.lease_duration:
        print(
            "paraserve operator: --workers must be ≥ 1 and --renew-deadline < --lease-duration",
            file=sys.stderr,
        )
        return 2
    try:
        _check_ranges(args)
        webhook = webhook_options.from_args(args)
        MeasureSettings.from_environ()  # read again when the loop starts; refuse bad ones now
    except ValueError as error:
        print(f"paraserve operator: {error}", file=sys.stderr)
        return 2
    options = OperatorOptions(
        kubeconfig=args.kubeconfig,
        namespaces=tuple(args.namespaces),
        controller=controller_settings(
            default_image=args.worker_image,
            workers=args.workers,
            resync=args.resync,
            backoff_base=args.restart_backoff,
            backoff_max=args.restart_backoff_max,
            unschedulable_after=args.unschedulable_timeout,
            start_after=args.start_timeout,
        ),
        metrics_address=args.metrics_address,
        metrics_port=args.metrics_port,
        health_address=args.health_address,
        health_port=args.health_port,
        leader_elect=args.leader_elect,
        lease_namespace=args.leader_election_namespace,
        lease_name=args.leader_election_id,
        identity=args.identity,
        lease=LeaseTimings(
            lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline,
            retry_period=args.retry_period,
        ),
        log_format=args.log_format,
        verbose=args.verbose,
        webhook=webhook,
    )
    try:
        return run(options)
    except Exception as error:  # a bad kubeconfig, an unreachable server: one line, no traceback
        print(f"paraserve operator: {' '.join(str(error).split())}", file=sys.stderr)
        return 1


def _check_ranges(args: argparse.Namespace) -> None:
    """ValueError with one line for a port or a duration out of its range."""
    for flag, port in (("--metrics-port", args.metrics_port), ("--health-port", args.health_port)):
        if not 0 <= port <= 65535:
            raise ValueError(f"{flag} {port}: a port is 0–65535 (0 disables it)")
    for flag, seconds in (
        ("--lease-duration", args.lease_duration),
        ("--renew-deadline", args.renew_deadline),
        ("--retry-period", args.retry_period),
        ("--resync", args.resync),
        ("--restart-backoff", args.restart_backoff),
        ("--restart-backoff-max", args.restart_backoff_max),
        ("--unschedulable-timeout", args.unschedulable_timeout),
        ("--start-timeout", args.start_timeout),
    ):
        if not 0 < seconds < float("inf"):
            raise ValueError(f"{flag} {seconds:g}: seconds must be > 0")
    if not args.retry_period < args.renew_deadline < args.lease_duration:
        raise ValueError(
            f"--retry-period {args.retry_period:g} < --renew-deadline {args.renew_deadline:g}"
            f" < --lease-duration {args.lease_duration:g} must hold: a leader stops writing"
            " before its lease can expire"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paraserve operator")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
