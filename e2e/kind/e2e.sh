#!/usr/bin/env bash
# `make e2e-kind`: up.sh (engine, node image, cluster, images, chart, suite), then down.sh,
# under the lock that keeps this machine to one kind cluster at a time.
# PARASERVE_KIND_KEEP=1 leaves the cluster and engine up afterwards (down.sh stops them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/kind/lib.sh
source "${here}/lib.sh"
exec 9>"${KIND_LOCK}"
if ! flock -n 9; then
    kind_step "waiting for the kind lock ${KIND_LOCK} (another kind cluster is up)"
    flock 9
fi
status=0
bash "${here}/up.sh" "$@" || status=$?
if [[ "${PARASERVE_KIND_KEEP:-0}" == 1 ]]; then
    kind_step "left running (PARASERVE_KIND_KEEP=1): bash e2e/kind/down.sh stops it"
else
    bash "${here}/down.sh" || status=$((status ? status : 1))
fi
kind_step "kind end-to-end: $([[ ${status} == 0 ]] && echo passed || echo "failed (${status})")"
exit "${status}"
