# shellcheck shell=bash
# Functions shared by e2e/kind/up.sh and examples/demo.sh: a kind cluster with fake GPUs,
# paraserve's two images built and loaded into it, and the chart installed.

KIND_CLUSTER="${KIND_CLUSTER:-paraserve}"
# Everything built for kind (node image, images, the engine's data) is cached here, outside the
# repository, next to the local control plane's binaries; state of a running set-up too.
KIND_CACHE="${PARASERVE_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/paraserve}/kind"
KIND_STATE="${KIND_CACHE}/state"
mkdir -p "${KIND_STATE}"
# One clock for the whole set-up, shared by the scripts it runs.
export KIND_T0_EPOCH="${KIND_T0_EPOCH:-$(date +%s)}"

# kind_step WHAT: one progress line with the time since the set-up began.
kind_step() {
    local elapsed=$(($(date +%s) - KIND_T0_EPOCH))
    printf '[kind %2dm%02ds] %s\n' $((elapsed / 60)) $((elapsed % 60)) "$*" >&2
}

kind_say() {
    printf '             %s\n' "$*" >&2
}

kind_fail() {
    kind_step "FAILED: $*"
    exit 1
}
IMAGE_TAG="${IMAGE_TAG:-dev}"
OPERATOR_IMAGE="ghcr.io/paraserve/operator:${IMAGE_TAG}"
WORKER_REPOSITORY="ghcr.io/paraserve/worker"
WORKER_IMAGE="${WORKER_REPOSITORY}:${IMAGE_TAG}"
# GPU feature discovery's labels of an A100 80 GB (memory in MiB, as nvidia-smi reports it).
GPU_PRODUCT="NVIDIA-A100-SXM4-80GB"
GPU_MEMORY_MIB=81920

kind_lib_repo() {
    cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd
}

kind_available() {
    command -v kind >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 \
        && docker info >/dev/null 2>&1
}

# kind_create_cluster KUBECONFIG_PATH: create the cluster (or reuse it) and write its kubeconfig.
kind_create_cluster() {
    local kubeconfig="$1" repo
    repo="$(kind_lib_repo)"
    if ! kind get clusters 2>/dev/null | grep -qx "${KIND_CLUSTER}"; then
        kind create cluster --name "${KIND_CLUSTER}" --config "${repo}/e2e/kind/cluster.yaml" \
            --kubeconfig "${kubeconfig}" --wait 120s
    else
        kind get kubeconfig --name "${KIND_CLUSTER}" >"${kubeconfig}"
    fi
}

# kind_load_images: build the operator and worker images and load them into every node.
kind_load_images() {
    local repo
    repo="$(kind_lib_repo)"
    docker build -f "${repo}/operator/Dockerfile" -t "${OPERATOR_IMAGE}" "${repo}"
    docker build -f "${repo}/images/worker.Dockerfile" -t "${WORKER_IMAGE}" "${repo}"
    kind load docker-image --name "${KIND_CLUSTER}" "${OPERATOR_IMAGE}" "${WORKER_IMAGE}"
}

# kind_fake_gpus NODE COUNT [POOL]: advertise COUNT nvidia.com/gpu on NODE, as the NVIDIA device
# plugin and GPU feature discovery would. kubelet keeps an extended resource it does not manage
# and recomputes allocatable from capacity; both are set so that nothing waits for it.
kind_fake_gpus() {
    local node="$1" count="$2" pool="${3:-}" gpus
    gpus="{\"nvidia.com/gpu\":\"${count}\"}"
    kubectl patch node "${node}" --subresource=status --type=merge \
        -p "{\"status\":{\"capacity\":${gpus},\"allocatable\":${gpus}}}"
    kubectl label node "${node}" --overwrite \
        nvidia.com/gpu.present=true \
        "nvidia.com/gpu.product=${GPU_PRODUCT}" \
        "nvidia.com/gpu.memory=${GPU_MEMORY_MIB}" \
        "nvidia.com/gpu.count=${count}"
    if [[ -n "${pool}" ]]; then
        kubectl label node "${node}" --overwrite "paraserve.dev/pool=${pool}"
    fi
    kubectl wait node "${node}" --timeout=60s \
        --for="jsonpath={.status.allocatable.nvidia\.com/gpu}=${count}"
}

# kind_workers: the worker nodes' names, one a line.
kind_workers() {
    kubectl get nodes -l '!node-role.kubernetes.io/control-plane' \
        -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'
}

# kind_install_chart NAMESPACE [HELM_ARGS…]: the chart with the images just loaded, the
# webhook on (self-managed), in a namespace that enforces Pod Security `restricted`.
kind_install_chart() {
    local namespace="$1" repo
    shift
    repo="$(kind_lib_repo)"
    kubectl create namespace "${namespace}" --dry-run=client -o yaml | kubectl apply -f -
    kubectl label namespace "${namespace}" --overwrite \
        pod-security.kubernetes.io/enforce=restricted
    helm upgrade --install paraserve "${repo}/charts/paraserve" --namespace "${namespace}" \
        --set "image.tag=${IMAGE_TAG}" \
        --set "workerImage.repository=${WORKER_REPOSITORY}" --set "workerImage.tag=${IMAGE_TAG}" \
        --set webhook.enabled=true "$@" --wait --timeout 5m
}
