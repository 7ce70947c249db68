#!/usr/bin/env bash
# `make test`'s kind step: the kind end-to-end run (e2e.sh) when it can run here and its cache
# is warm, else one line saying why not. A cold cache means building the node image's binaries,
# the node image and both images first — longer than CI's budget on a cold machine (docs/kind.md
# has the times) — so that is left to `make e2e-kind`, which fills the cache.
#   PARASERVE_KIND=1 make test   # run it even cold;  PARASERVE_KIND=0: never
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/kind/lib.sh
source "${here}/lib.sh"
case "${PARASERVE_KIND:-auto}" in
    0) echo "kind e2e: skipped (PARASERVE_KIND=0)"; exit 0 ;;
    1) exec bash "${here}/e2e.sh" ;;
    auto) ;;
    *) echo "PARASERVE_KIND=${PARASERVE_KIND}: want 0, 1 or unset" >&2; exit 2 ;;
esac
if ! why="$(kind_available)"; then
    echo "kind e2e: skipped: ${why} (make e2e-kind needs a Docker engine it can run)"
    exit 0
fi
if [[ ! -f "${KIND_CACHE}/warm" ]] || [[ -n "$(kind_python -m e2e.kind missing)" ]]; then
    echo "kind e2e: skipped: its cache (${KIND_CACHE}) is cold and a cold build does not fit" \
        "CI's time; \`make e2e-kind\` fills it, PARASERVE_KIND=1 runs it anyway"
    exit 0
fi
echo "kind e2e: cache warm (${KIND_CACHE}): running it"
exec bash "${here}/e2e.sh"
