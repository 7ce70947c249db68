#!/usr/bin/env bash
# Undo e2e/kind/up.sh: delete the kind cluster and its network, stop the engine if this
# project started it, and restore the host's iptables rules and forwarding settings. The
# caches (node image, images, binaries) stay for the next run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/kind/lib.sh
source "${here}/lib.sh"
if docker info >/dev/null 2>&1; then
    kind_tools 2>/dev/null || true
    if command -v kind >/dev/null && kind_cluster_exists; then
        kind_step "deleting kind cluster ${KIND_CLUSTER}"
        kind delete cluster --name "${KIND_CLUSTER}" >/dev/null 2>&1
    fi
    # Build containers a stopped run may have left, then kind's network.
    docker ps -aq --filter name=paraserve-node-build | xargs -r docker rm -f -v >/dev/null
    if docker network inspect kind >/dev/null 2>&1; then
        docker network rm kind >/dev/null
    fi
fi
rm -f "${KIND_KUBECONFIG}"
bash "${here}/engine.sh" down
