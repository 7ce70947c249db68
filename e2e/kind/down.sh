#!/usr/bin/env bash
# Delete the kind cluster e2e/kind/up.sh made.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/kind/lib.sh
source "${here}/lib.sh"
kind delete cluster --name "${KIND_CLUSTER}"
rm -f "${XDG_CACHE_HOME:-${HOME}/.cache}/paraserve/kind/kubeconfig"
