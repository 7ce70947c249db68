#!/usr/bin/env bash
# The end-to-end suite on kind: a control plane and two workers with 4 fake GPUs each, both
# images built and loaded, the chart installed, then `pytest e2e/tests` against it.
#
#   bash e2e/kind/up.sh            # create (or reuse) the cluster, install, run the suite
#   bash e2e/kind/up.sh --no-suite # … and stop before the suite
#   bash e2e/kind/down.sh          # delete the cluster
#
# Needs docker, kind, kubectl and helm on the PATH, and the project's venv (make e2e-kind).
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

for tool in docker kind kubectl helm python; do
    command -v "${tool}" >/dev/null || { echo "up.sh: ${tool} is not on the PATH" >&2; exit 1; }
done

state="${XDG_CACHE_HOME:-${HOME}/.cache}/paraserve/kind"
mkdir -p "${state}"
export KUBECONFIG="${KUBECONFIG_KIND:-${state}/kubeconfig}"
kind_create_cluster "${KUBECONFIG}"
kind_load_images
while read -r node; do
    kind_fake_gpus "${node}" 4
done < <(kind_workers)
# Fast measurement, so the suite does not wait minutes for status.measured.
kind_install_chart paraserve-system \
    --set-json 'operator.extraEnv=[{"name":"PARASERVE_MEASURE_INTERVAL","value":"2"},{"name":"PARASERVE_MEASURE_WINDOW","value":"10"}]'

echo "kind cluster ${KIND_CLUSTER} is ready: export KUBECONFIG=${KUBECONFIG}"
if [[ "${run_suite}" == 1 ]]; then
    cd "${repo}"
    PARASERVE_E2E_CLUSTER=kind python -m pytest e2e/tests -q
fi
