#!/usr/bin/env bash
# The end-to-end suite on kind: a Docker engine (made to run where none does), the node image
# assembled offline, a control plane and two workers with 4 fake GPUs each, both images built
# and loaded, the chart installed, then `pytest e2e/tests` against it.
#
#   bash e2e/kind/up.sh            # create (or reuse) all of it, install, run the suite
#   bash e2e/kind/up.sh --no-suite # … and stop before the suite
#   bash e2e/kind/down.sh          # delete the cluster, stop the engine, restore the host
#   bash e2e/kind/e2e.sh           # up, suite, down, under the one-cluster lock (make e2e-kind)
#
# Needs root (or a running engine), go, gcc and the project's venv on the PATH (make e2e-kind).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
# shellcheck source=e2e/kind/lib.sh
source "${here}/lib.sh"

run_suite=1
for arg in "$@"; do
    case "${arg}" in
        --no-suite) run_suite=0 ;;
        *) echo "usage: $0 [--no-suite]" >&2; exit 2 ;;
    esac
done
command -v python >/dev/null || { echo "up.sh: python is not on the PATH" >&2; exit 1; }
if ! why="$(kind_available)"; then
    kind_fail "kind cannot run here: ${why}"
fi
cd "${repo}"

kind_bring_up
# Fast measurement, so the suite does not wait minutes for status.measured.
kind_install_chart paraserve-system \
    --set-json 'operator.extraEnv=[{"name":"PARASERVE_MEASURE_INTERVAL","value":"2"},{"name":"PARASERVE_MEASURE_WINDOW","value":"10"},{"name":"PARASERVE_MEASURE_TIMEOUT","value":"2"},{"name":"PARASERVE_MEASURE_REFRESH","value":"30"}]'

kind_step "kind cluster ${KIND_CLUSTER} is ready: export KUBECONFIG=${KUBECONFIG}"
kind_say "cached: node binaries and pause in $(kind_python -c 'from e2e.cluster.build import cache_root; print(cache_root())')/bin,"
kind_say "        images (node $(cat "${KIND_CACHE}/warm"), operator, worker, bases) in ${KIND_CACHE}/docker"
if [[ "${run_suite}" == 1 ]]; then
    kind_step "pytest e2e/tests (PARASERVE_E2E_CLUSTER=kind)"
    status=0
    PARASERVE_E2E_CLUSTER=kind python -m pytest e2e/tests -q -p no:cacheprovider || status=$?
    kind_step "suite finished (exit ${status})"
    exit "${status}"
fi
