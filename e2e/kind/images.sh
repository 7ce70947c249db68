#!/usr/bin/env bash
# paraserve's two images, built from their own Dockerfiles (operator/Dockerfile,
# images/worker.Dockerfile) where no registry can be pulled from:
#
#   bash e2e/kind/images.sh OPERATOR_TAG WORKER_TAG
#
# Both Dockerfiles take their base as the build argument PYTHON_IMAGE, whose default is the
# public python:3.11.11-slim-bookworm. Where that image cannot be pulled, this makes a local
# stand-in (e2e/kind/images/python.Dockerfile on the debootstrap base of the node image) and
# passes it; torch comes from the package index pip reaches (PyPI) instead of PyTorch's CPU
# index. The Docker layer cache (in the engine's data root, under the kind cache) keeps a warm
# build to seconds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
# shellcheck source=e2e/kind/lib.sh
source "${here}/lib.sh"
operator="$1" worker="$2"
public=python:3.11.11-slim-bookworm
local_base=paraserve.local/python:3.11-bookworm
export DOCKER_BUILDKIT=0  # the classic builder: BuildKit's `# syntax` line would pull

if docker image inspect "${public}" >/dev/null 2>&1; then
    base="${public}"
    torch_args=()
else
    base="${local_base}"
    torch_args=(--build-arg "TORCH_INDEX_URL=${PARASERVE_TORCH_INDEX_URL:-https://pypi.org/simple}")
    debian="$(kind_python -m e2e.kind base-image)"
    context="$(mktemp -d "${KIND_CACHE}/context.XXXXXX")"
    cp "${here}/images/python.Dockerfile" "${context}/Dockerfile"
    cp /etc/ssl/certs/ca-certificates.crt "${context}/host-ca.crt"
    kind_step "image ${local_base}: Debian's Python 3.11 as the Dockerfiles' base"
    docker build --network=host -q --build-arg "BASE_IMAGE=${debian}" -t "${local_base}" \
        "${context}" >"${KIND_STATE}/python-base.log" 2>&1 \
        || { rm -rf "${context}"; tail -20 "${KIND_STATE}/python-base.log" >&2
             kind_fail "building ${local_base}"; }
    rm -rf "${context}"
fi

# inputs DOCKERFILE ARGS…: a fingerprint of what an image is built from (the Dockerfile, the
# files its context sends, the base image, the build arguments).
inputs() {
    local dockerfile="$1"
    shift
    {
        echo "$*"
        docker image inspect -f '{{.Id}}' "${base}"
        cd "${repo}" && find "${dockerfile}" pyproject.toml README.md operator/paraserve -type f \
            ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
}

# build_image TAG DOCKERFILE ARGS…: build unless the image of these inputs is there. The build
# stage is tagged TAG-build, so its layers (torch, for the worker) stay cached when the project's
# sources change, and pruning untagged images removes only images that were replaced.
build_image() {
    local tag="$1" dockerfile="$2" log fingerprint
    shift 2
    log="${KIND_STATE}/build-$(basename "${dockerfile}").log"
    fingerprint="$(inputs "${dockerfile}" "$@")"
    if [[ "$(docker image inspect -f '{{index .Config.Labels "dev.paraserve.inputs"}}' "${tag}" \
        2>/dev/null)" == "${fingerprint}" ]]; then
        kind_step "image ${tag}: reusing it (inputs unchanged)"
        return 0
    fi
    kind_step "image ${tag}: docker build -f ${dockerfile} (PYTHON_IMAGE=${base})"
    local args=(--network=host --build-arg "PYTHON_IMAGE=${base}" "$@" -f "${repo}/${dockerfile}")
    { docker build "${args[@]}" --target build -t "${tag}-build" "${repo}" \
        && docker build "${args[@]}" --label "dev.paraserve.inputs=${fingerprint}" -t "${tag}" \
            "${repo}"; } >"${log}" 2>&1 \
        || { tail -30 "${log}" >&2; kind_fail "building ${tag} (log: ${log})"; }
    docker image prune -f >/dev/null
    kind_step "image ${tag}: built, $(docker image inspect -f '{{.Size}}' "${tag}" \
        | awk '{printf "%.0f MB", $1 / 1e6}')"
}

build_image "${operator}" operator/Dockerfile
build_image "${worker}" images/worker.Dockerfile "${torch_args[@]}"
