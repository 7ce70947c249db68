"""Pure builders of the objects a deployment owns: rank pods, the Services, the topology."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from paraserve.api import API_VERSION, KIND, InferenceDeploymentSpec, Stage
from paraserve.api.labels import (
    GROUP_SIZE_ANNOTATION,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_PP_RANK,
    LABEL_RANK,
    LABEL_REPLICA,
    LABEL_TEMPLATE_HASH,
    LABEL_TP_GROUP,
    LABEL_TP_RANK,
    MANAGER,
    PLANNED_NODE_ANNOTATION,
)
from paraserve.api.rank_env import DEFAULT_MASTER_PORT, parse_rank_env, rank_environ
from paraserve.api.rank_layout import Rank, ranks
from paraserve.api.topology_document import (
    TOPOLOGY_DIR,
    TOPOLOGY_KEY,
    TOPOLOGY_PATH,
    topology_document,
)
from paraserve.engines import command as engine_command
from paraserve.engines import default_image as engine_image
from paraserve.engines import model_env, model_volumes

MASTER_PORT: Final = DEFAULT_MASTER_PORT
CONTAINER_NAME: Final = "rank"
#: The container port of a rendered engine's OpenAI-compatible API (and its /metrics).
API_PORT_NAME: Final = "http"
#: vLLM's and SGLang's liveness of the whole engine: 200 once every rank has joined.
HEALTH_PATH: Final = "/health"
HOSTNAME_LABEL: Final = "kubernetes.io/hostname"

# A pod's hostname is one DNS label; `<name>-<r>-<k>` must fit in it.
DNS_LABEL_MAX: Final = 63


@dataclass(frozen=True)
class Owner:
    """The InferenceDeployment that owns what is rendered."""

    name: str
    namespace: str
    uid: str

    @property
    def reference(self) -> dict[str, Any]:
        # controller=true lets the garbage collector and `kubectl` attribute the objects to us;
        # blockOwnerDeletion makes a foreground delete wait for the ranks.
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def pod_name(deployment: str, replica: int, rank: int) -> str:
    return f"{deployment}-{replica}-{rank}"


def service_name(deployment: str) -> str:
    return deployment


def api_service_name(deployment: str) -> str:
    """The client Service of a rendered engine: the heads of the Ready replicas."""
    return f"{deployment}-api"


def topology_configmap_name(deployment: str, hash_: str) -> str:
    """One per template version: a rolling update never rewrites the old replicas' topology."""
    return f"{deployment}-topology-{hash_}"


def master_addr(deployment: str, namespace: str, replica: int) -> str:
    """Stable DNS name of rank 0 of a replica: hostname.subdomain.namespace.svc."""
    return f"{pod_name(deployment, replica, 0)}.{service_name(deployment)}.{namespace}.svc"


def tp_group(replica: int, pp_rank: int) -> str:
    """Label value naming one tensor-parallel group across the deployment's replicas."""
    return f"{replica}-{pp_rank}"


def name_problem(deployment: str, spec: InferenceDeploymentSpec) -> str | None:
    """Why pod hostnames of this deployment would be invalid, or None."""
    longest = pod_name(deployment, max(spec.replicas - 1, 0), spec.parallelism.world_size - 1)
    if len(longest) > DNS_LABEL_MAX:
        return (
            f"pod hostname {longest!r} is {len(longest)} characters; a DNS label allows"
            f" {DNS_LABEL_MAX}: shorten the deployment name"
        )
    if not deployment[:1].isalpha():
        return f"name {deployment!r} must start with a letter: it names the headless Service"
    return None


def selector_labels(deployment: str) -> dict[str, str]:
    return {LABEL_DEPLOYMENT: deployment}


def template_hash(spec: InferenceDeploymentSpec, default_image: str) -> str:
    """Fingerprint of everything a rank pod or its topology is made from; a change rolls.

    Left out: replicas (scaling), the SLO and metrics profile (read by the measurement loop),
    and the memory-check inputs (gpu.memory, maxMemoryUtilization, memory), which change the
    verdict but not a single byte of a pod.
    """
    essence = spec.model_dump(
        mode="json",
        by_alias=True,
        include={
            "model": True,
            "parallelism": True,
            "serving": True,
            "gpu": {"resource_name"},
            "placement": True,
            "worker": True,
            "engine": True,
            "metrics": {"port", "path"},
        },
    )
    essence["defaultImage"] = default_image
    digest = hashlib.sha256(json.dumps(essence, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def rank_env(
    owner: Owner, spec: InferenceDeploymentSpec, replica: int, rank: Rank
) -> list[dict[str, Any]]:
    """The rank environment contract (paraserve.api.rank_env), then the user's own variables."""
    architecture = spec.model.architecture
    values = rank_environ(
        spec.parallelism,
        rank.rank,
        num_layers=architecture.num_layers if architecture is not None else None,
        replica=replica,
        master_addr=master_addr(owner.name, owner.namespace, replica),
        master_port=MASTER_PORT,
        topology_path=TOPOLOGY_PATH,
        metrics_port=spec.metrics.port,
        metrics_path=spec.metrics.path,
    )
    env = [{"name": name, "value": value} for name, value in values.items()]
    return env + [dict(variable) for variable in spec.worker.env]


def replica_and_rank(labels: Mapping[str, str]) -> tuple[int, int] | None:
    """(replica, rank) read back from a rank pod's labels; None when it carries none."""
    try:
        return int(labels[LABEL_REPLICA]), int(labels[LABEL_RANK])
    except (KeyError, TypeError, ValueError):
        return None


def rank_labels(deployment: str, replica: int, rank: Rank, hash_: str) -> dict[str, str]:
    return {
        LABEL_DEPLOYMENT: deployment,
        LABEL_REPLICA: str(replica),
        LABEL_RANK: str(rank.rank),
        LABEL_PP_RANK: str(rank.pp_rank),
        LABEL_TP_RANK: str(rank.tp_rank),
        LABEL_TP_GROUP: tp_group(replica, rank.pp_rank),
        LABEL_TEMPLATE_HASH: hash_,
        LABEL_MANAGED_BY: MANAGER,
    }


def _resources(spec: InferenceDeploymentSpec) -> dict[str, Any]:
    """The user's cpu/memory requirements plus exactly one GPU (limit; the request follows)."""
    resources = {key: dict(value) for key, value in spec.worker.resources.items()}
    limits = resources.setdefault("limits", {})
    limits[spec.gpu.resource_name] = 1
    requests = resources.get("requests")
    if requests is not None and spec.gpu.resource_name in requests:
        requests[spec.gpu.resource_name] = 1
    return resources


def _pinned(node: str) -> dict[str, Any]:
    """Required node affinity to the node the operator placed the group on."""
    return {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
            ]
        }
    }


def _affinity(deployment: str, replica: int, rank: Rank) -> dict[str, Any]:
    """Required co-location of a tensor-parallel group on one node (NVLink, not network)."""
    return {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {
                        "matchLabels": {
                            LABEL_DEPLOYMENT: deployment,
                            LABEL_TP_GROUP: tp_group(replica, rank.pp_rank),
                        }
                    },
                    "topologyKey": HOSTNAME_LABEL,
                }
            ]
        }
    }


def rank_pod(
    owner: Owner,
    spec: InferenceDeploymentSpec,
    replica: int,
    rank: Rank,
    *,
    hash_: str,
    default_image: str,
    node: str | None = None,
    counted_on: str | None = None,
) -> dict[str, Any]:
    """The pod of one rank: one GPU, the env contract, its DNS identity and its placement.

    `node`: where the operator placed the rank's tensor-parallel group (pinned), if anywhere;
    `counted_on`: where its GPU is counted until it is bound, when the scheduler picks the node.
    """
    name = pod_name(owner.name, replica, rank.rank)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.worker.image or default_image,
        "env": rank_env(owner, spec, replica, rank),
        "resources": _resources(spec),
        "ports": [
            {"name": "metrics", "containerPort": spec.metrics.port, "protocol": "TCP"},
            {"name": "rendezvous", "containerPort": MASTER_PORT, "protocol": "TCP"},
        ],
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "topology", "mountPath": TOPOLOGY_DIR, "readOnly": True},
        ],
    }
    if spec.worker.command is not None:
        container["command"] = list(spec.worker.command)
    if spec.worker.args is not None:
        container["args"] = list(spec.worker.args)
    extra_volumes: list[dict[str, Any]] = []
    if spec.engine.rendered:
        extra_volumes = _engine_container(container, spec, rank)
    pod_spec: dict[str, Any] = {
        "hostname": name,
        "subdomain": service_name(owner.name),
        # A rank that exits cannot rejoin its collective groups: the gang is recreated instead.
        "restartPolicy": "Never",
        # Thousands of service variables would only slow rank start-up.
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            {
                "name": "topology",
                "configMap": {
                    "name": topology_configmap_name(owner.name, hash_),
                    "items": [{"key": TOPOLOGY_KEY, "path": TOPOLOGY_KEY}],
                },
            },
            *extra_volumes,
        ],
    }
    placement = spec.placement
    if placement.node_selector:
        pod_spec["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in placement.tolerations]
    annotations = {LABEL_TEMPLATE_HASH: hash_}
    if node is not None:
        # Pinned: every member of the group goes to this node, so no pod affinity is needed
        # (the scheduler's inter-pod affinity costs it a look at every pod for every pod).
        pod_spec["affinity"] = {"nodeAffinity": _pinned(node)}
        annotations[PLANNED_NODE_ANNOTATION] = node
        annotations[GROUP_SIZE_ANNOTATION] = str(spec.parallelism.tensor)
    else:
        if placement.tensor_parallel_within_node and spec.parallelism.tensor > 1:
            pod_spec["affinity"] = _affinity(owner.name, replica, rank)
        if counted_on is not None:
            # Not pinned: the annotation only tells other reconciles where its GPU is spoken for.
            annotations[PLANNED_NODE_ANNOTATION] = counted_on
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": rank_labels(owner.name, replica, rank, hash_),
            "annotations": annotations,
            "ownerReferences": [owner.reference],
        },
        "spec": pod_spec,
    }


def _engine_container(
    container: dict[str, Any], spec: InferenceDeploymentSpec, rank: Rank
) -> list[dict[str, Any]]:
    """Make the rank container run the rendered engine; the pod volumes it needs.

    The command is rendered from the container's own environment (as the process will see
    it, the user's variables included), so the two can never disagree.
    """
    literal = {e["name"]: str(e["value"]) for e in container["env"] if "value" in e}
    rendered = engine_command(spec, parse_rank_env(literal))
    assert rendered is not None  # spec.engine.rendered
    container["command"] = list(rendered.command)
    container["args"] = list(rendered.args)
    container["image"] = spec.worker.image or engine_image(spec)
    container["env"] = [*model_env(spec), *container["env"]]
    port = spec.engine.api_port
    container["ports"] = [
        {"name": API_PORT_NAME, "containerPort": port, "protocol": "TCP"},
        {"name": "rendezvous", "containerPort": MASTER_PORT, "protocol": "TCP"},
    ]
    volumes, mounts = model_volumes(spec)
    container["volumeMounts"] = [*container["volumeMounts"], *mounts]
    if rank.rank == 0:
        # Only the head serves HTTP; it answers /health once every rank of the replica joined.
        container["readinessProbe"] = {
            "httpGet": {"path": HEALTH_PATH, "port": API_PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        }
    return volumes


def replica_pods(
    owner: Owner,
    spec: InferenceDeploymentSpec,
    replica: int,
    *,
    hash_: str,
    default_image: str,
    only_ranks: Sequence[int] | None = None,
    group_nodes: Mapping[int, str] | None = None,
    counted_on: Mapping[int, str] | None = None,
) -> list[dict[str, Any]]:
    """The pods of one replica in Megatron rank order (optionally just some ranks).

    `group_nodes` pins tensor-parallel groups (by pipeline rank) to nodes; `counted_on`
    (by rank) only says where unpinned ranks' GPUs are counted until they are bound.
    """
    nodes = group_nodes or {}
    counted = counted_on or {}
    wanted = None if only_ranks is None else set(only_ranks)
    return [
        rank_pod(
            owner,
            spec,
            replica,
            rank,
            hash_=hash_,
            default_image=default_image,
            node=nodes.get(rank.tp_group),
            counted_on=counted.get(rank.rank),
        )
        for rank in ranks(spec.parallelism)
        if wanted is None or rank.rank in wanted
    ]


def headless_service(owner: Owner, spec: InferenceDeploymentSpec) -> dict[str, Any]:
    """Gives every rank a DNS name, resolvable before it is ready (rendezvous comes first)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(owner.name),
            "namespace": owner.namespace,
            "labels": {**selector_labels(owner.name), LABEL_MANAGED_BY: MANAGER},
            "ownerReferences": [owner.reference],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(owner.name),
            "ports": [
                {
                    "name": "rendezvous",
                    "port": MASTER_PORT,
                    "targetPort": MASTER_PORT,
                    "protocol": "TCP",
                },
                {
                    "name": "metrics",
                    "port": spec.metrics.port,
                    "targetPort": spec.metrics.port,
                    "protocol": "TCP",
                },
            ],
        },
    }


def api_service(owner: Owner, spec: InferenceDeploymentSpec) -> dict[str, Any] | None:
    """The clients' Service: the engine's API on the head of every Ready replica.

    A Service routes only to Ready endpoints, and only the head (rank 0) serves the API and is
    Ready once /health answers, so this selects exactly the heads of the Ready replicas.
    None for engines whose command the operator does not render.
    """
    port = spec.engine.api_port
    if not spec.engine.rendered or port is None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": api_service_name(owner.name),
            "namespace": owner.namespace,
            "labels": {**selector_labels(owner.name), LABEL_MANAGED_BY: MANAGER},
            "ownerReferences": [owner.reference],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {**selector_labels(owner.name), LABEL_RANK: "0"},
            "ports": [
                {
                    "name": API_PORT_NAME,
                    "port": port,
                    "targetPort": API_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def topology(
    owner: Owner, spec: InferenceDeploymentSpec, stages: Sequence[Stage]
) -> dict[str, Any]:
    """The topology document every rank reads (paraserve.api.topology_document)."""
    return topology_document(
        owner.name,
        owner.namespace,
        spec,
        stages,
        service=service_name(owner.name),
        master_port=MASTER_PORT,
    )


def topology_configmap(
    owner: Owner, spec: InferenceDeploymentSpec, stages: Sequence[Stage], hash_: str
) -> dict[str, Any]:
    """The topology of one template version (its pods mount it by name)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": topology_configmap_name(owner.name, hash_),
            "namespace": owner.namespace,
            "labels": {
                **selector_labels(owner.name),
                LABEL_MANAGED_BY: MANAGER,
                LABEL_TEMPLATE_HASH: hash_,
            },
            "ownerReferences": [owner.reference],
        },
        "data": {TOPOLOGY_KEY: json.dumps(topology(owner, spec, stages), indent=1)},
    }
