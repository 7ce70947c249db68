"""The labels and annotations on the objects a deployment owns: written by the operator, read
back by its watches, its measurement loop and the tools that run ranks outside their pods."""

from typing import Final

# Every owned object carries these; the pod ones locate a rank in its gang.
LABEL_DEPLOYMENT: Final = "paraserve.dev/deployment"
LABEL_REPLICA: Final = "paraserve.dev/replica"
LABEL_RANK: Final = "paraserve.dev/rank"
LABEL_PP_RANK: Final = "paraserve.dev/pp-rank"
LABEL_TP_RANK: Final = "paraserve.dev/tp-rank"
LABEL_TP_GROUP: Final = "paraserve.dev/tp-group"
LABEL_TEMPLATE_HASH: Final = "paraserve.dev/template-hash"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "paraserve-operator"

#: The node the operator placed a rank's tensor-parallel group on (before the scheduler binds).
PLANNED_NODE_ANNOTATION: Final = "paraserve.dev/node"
#: On a pinned rank: how many ranks its group has (all pinned to one node). A group holds its node's
#: GPUs from its first member on, also for members not created yet (an operator killed while
#: creating the group, or a create lost): another deployment is never placed into their GPUs.
GROUP_SIZE_ANNOTATION: Final = "paraserve.dev/group-size"

#: Overrides the pod IP and port, for ranks whose metrics are served elsewhere (a sidecar,
#: a proxy, or a test harness running the rank outside its pod): ``host:port``.
METRICS_ADDRESS_ANNOTATION: Final = "paraserve.dev/metrics-address"
