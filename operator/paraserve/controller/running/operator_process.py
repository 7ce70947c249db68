"""Runs the operator process: leader election, then kopf with our handlers, health and metrics.

Extras plug in here without touching the reconcile: an admission webhook adds its
`@kopf.on.validate` handlers to the registry and sets `settings.admission.server` in
`operator_settings`; the measurement loop is started beside the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import kopf

from paraserve.controller.admission.options import WebhookOptions
from paraserve.controller.measurement import measure_loop
from paraserve.controller.reconciling.gang import Backoff
from paraserve.controller.reconciling.reconcile import ControllerSettings, Reconciler, Views
from paraserve.controller.running import gc_pauses, kopf_essence, kopf_toggles, kopf_turns, watches
from paraserve.controller.running.cluster_io import Cluster, load_api_client
from paraserve.controller.running.leader import Fence, LeaderElector, LeaseTimings
from paraserve.controller.running.manager import Manager
from paraserve.controller.running.operator_metrics import OperatorMetrics

#: Pod creates and deletes in flight at once (a replica's ranks are created together), writes of
#: the deployments (status, the gang annotation), and every other call (Services, ConfigMaps,
#: Events): a status write never waits behind the creates of the deployments starting.
POD_LANE: Final = 64
DEPLOYMENT_LANE: Final = 8
OTHER_LANE: Final = 16

logger = logging.getLogger("paraserve.operator")


@dataclass
class OperatorOptions:
    kubeconfig: str | None = None
    namespaces: Sequence[str] = ()
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 8000
    health_address: str = "0.0.0.0"
    health_port: int = 8080
    leader_elect: bool = True
    lease_namespace: str = "default"
    lease_name: str = "paraserve-operator"
    identity: str = ""
    lease: LeaseTimings = field(default_factory=LeaseTimings)
    log_format: str = "json"
    verbose: bool = False
    webhook: WebhookOptions | None = None


def default_identity() -> str:
    """The pod name when run in a pod (a restarted container takes its Lease back at once)."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def operator_settings(options: OperatorOptions) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Leadership comes from our Lease; kopf's own peering (and its CRDs) is not used.
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    watches.watch_only_ours(settings)
    return settings


def kopf_login(configuration: Any) -> Callable[..., kopf.ConnectionInfo]:
    """kopf's login from our own client's credentials, so `--kubeconfig` governs kopf too.

    kopf's `login_via_client` reads only in-cluster credentials or $KUBECONFIG.
    """

    def login(**_: Any) -> kopf.ConnectionInfo:
        # The hook-refreshed header also covers rotated in-cluster service-account tokens.
        header = configuration.get_api_key_with_prefix(
            "BearerToken"
        ) or configuration.get_api_key_with_prefix("authorization")
        parts = header.split(" ", 1) if header else []
        scheme, token = (
            (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
        )
        return kopf.ConnectionInfo(
            server=configuration.host,
            ca_path=configuration.ssl_ca_cert,
            insecure=not configuration.verify_ssl,
            username=configuration.username or None,
            password=configuration.password or None,
            scheme=scheme,
            token=token,
            certificate_path=configuration.cert_file,
            private_key_path=configuration.key_file,
        )

    return login


def build_registry(manager: Manager, cluster: Cluster) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry, id="client-credentials")(kopf_login(cluster.configuration))
    watches.register(registry, manager)
    measure_loop.register(
        registry,
        measure_loop.Measurer(
            cluster,
            measure_loop.MeasureSettings.from_environ(),
            writes=manager.reconciler.writes,
            may_act_on=manager.may_act_on,
        ),
    )
    return registry


def configure_logging(options: OperatorOptions) -> None:
    formats = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN}
    kopf.configure(
        verbose=options.verbose,
        log_format=formats.get(options.log_format, kopf.LogFormat.FULL),
    )
    if not options.verbose:
        # kopf reports every watch handler's success per object; our reconciles log what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


@contextlib.asynccontextmanager
async def standby_health(address: str, port: int) -> Any:
    """A /healthz for a replica that waits for leadership (kopf's own starts when leading)."""
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "standby"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, address, port, reuse_address=True)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()


async def serve(options: OperatorOptions) -> int:
    """Run until stopped (0) or until leadership is lost (1)."""
    metrics = OperatorMetrics()
    if options.metrics_port:
        metrics.serve(options.metrics_port, options.metrics_address)
    fence = Fence() if options.leader_elect else None
    cluster = Cluster(
        load_api_client(options.kubeconfig, pool_size=POD_LANE + DEPLOYMENT_LANE + OTHER_LANE),
        workers=OTHER_LANE,
        pod_workers=POD_LANE,
        deployment_workers=DEPLOYMENT_LANE,
        observe=metrics.observe_call,
        time_calls=metrics.time_call,
        may_write=fence.held if fence is not None else None,
    )
    elector: LeaderElector | None = None
    lease_cluster: Cluster | None = None
    if options.leader_elect:
        # Its own threads, connections and a deadline shorter than the lease: renewals never
        # wait behind pod creates, and never hang past the renew deadline.
        lease_cluster = Cluster(
            load_api_client(options.kubeconfig, pool_size=4),
            workers=4,
            observe=metrics.observe_call,
            timeout=options.lease.renew_deadline,
            name="lease-api",
        )
        elector = LeaderElector(
            lease_cluster,
            namespace=options.lease_namespace,
            name=options.lease_name,
            identity=options.identity or default_identity(),
            timings=options.lease,
            fence=fence,
        )
        if options.health_port:
            async with standby_health(options.health_address, options.health_port):
                await elector.acquire()
        else:
            await elector.acquire()
        metrics.leader.set(1)

    manager = Manager(
        Reconciler(cluster, Views(), options.controller, metrics),
        metrics,
        acting=fence.held if fence is not None else (lambda: True),
    )
    kopf_toggles.install()
    kopf_turns.install()
    cluster.on_deployment_lane_room(manager.lane_has_room)
    registry = build_registry(manager, cluster)
    settings = operator_settings(options)
    kopf_essence.install(settings, registry)
    if options.webhook is not None:
        from paraserve.controller.admission import server as webhook_server

        webhook_server.install(
            options.webhook,
            registry,
            settings,
            manager.reconciler,
            cluster.write_webhook_configuration,
            options.namespaces,
        )
    stop = asyncio.Event()
    liveness = (
        f"http://{options.health_address}:{options.health_port}/healthz"
        if options.health_port
        else None
    )
    kopf_task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            settings=settings,
            clusterwide=not options.namespaces,
            namespaces=list(options.namespaces),
            liveness_endpoint=liveness,
            stop_flag=stop,
            standalone=True,
        ),
        name="kopf",
    )
    tasks: set[asyncio.Task[Any]] = {kopf_task}
    lost: asyncio.Task[None] | None = None
    if elector is not None:
        lost = asyncio.create_task(elector.hold(), name="lease")
        tasks.add(lost)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if lost is not None and lost in done:
            # The fence stopped every write already; stop kopf too, and let the supervisor
            # restart us as a candidate.
            if lost.exception() is not None:
                logger.error("lease renewal crashed", exc_info=lost.exception())
            if fence is not None:
                fence.revoke()
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(kopf_task, timeout=10)
            return 1
        error = None if kopf_task.cancelled() else kopf_task.exception()
        if error is not None:
            # kopf's own failure is the operator's: a non-zero exit, with the traceback.
            logger.error("kopf stopped with an error", exc_info=error)
            return 1
        return 0
    finally:
        metrics.leader.set(0)
        if elector is not None and lost is not None and not lost.done():
            lost.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(elector.release(), timeout=options.lease.renew_deadline)
        cluster.close()
        if lease_cluster is not None:
            lease_cluster.close()


def run(options: OperatorOptions) -> int:
    configure_logging(options)
    gc_pauses.tune()
    try:
        return asyncio.run(serve(options))
    except KeyboardInterrupt:
        return 130


def controller_settings(
    *,
    default_image: str,
    workers: int,
    resync: float,
    backoff_base: float,
    backoff_max: float,
    unschedulable_after: float = 120.0,
    start_after: float = 600.0,
) -> ControllerSettings:
    return ControllerSettings(
        default_image=default_image,
        backoff=Backoff(base=backoff_base, cap=backoff_max),
        resync_seconds=resync,
        workers=workers,
        unschedulable_after=unschedulable_after,
        start_after=start_after,
    )
