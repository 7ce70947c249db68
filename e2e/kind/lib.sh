# shellcheck shell=bash
# Functions shared by e2e/kind/*.sh and examples/demo.sh: a Docker engine, the node image built
# offline, a kind cluster with fake GPUs, paraserve's two images built and loaded into it, and
# the chart installed.

KIND_CLUSTER="${KIND_CLUSTER:-paraserve}"
IMAGE_TAG="${IMAGE_TAG:-dev}"
OPERATOR_IMAGE="ghcr.io/paraserve/operator:${IMAGE_TAG}"
WORKER_REPOSITORY="ghcr.io/paraserve/worker"
WORKER_IMAGE="${WORKER_REPOSITORY}:${IMAGE_TAG}"
# Everything built for kind (node image, images, the engine's data) is cached here, outside the
# repository, next to the local control plane's binaries; state of a running set-up too.
KIND_CACHE="${PARASERVE_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/paraserve}/kind"
KIND_STATE="${KIND_CACHE}/state"
KIND_KUBECONFIG="${KIND_STATE}/kubeconfig"
# One lock for a kind cluster's whole life: one cluster at a time on this machine.
KIND_LOCK="${KIND_LOCK:-/tmp/paraserve-kind.lock}"
mkdir -p "${KIND_STATE}"
# One clock for the whole set-up, shared by the scripts and Python it runs.
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

kind_lib_repo() {
    cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd
}

# kind_python ARGS…: the project's Python with the repository importable (e2e.kind, e2e.cluster).
kind_python() {
    local repo
    repo="$(kind_lib_repo)"
    PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}" python "$@"
}

# kind_tools: kind (built from its Go module), kubectl and helm (the local control plane's) on
# the PATH, through a folder of links in the cache.
kind_tools() {
    local bin="${KIND_CACHE}/bin" name path
    mkdir -p "${bin}"
    for name in kind kubectl helm; do
        path="$(kind_python -m e2e.kind binary "${name}")"
        [[ -x "${path}" ]] || return 1
        ln -sfn "${path}" "${bin}/${name}"
    done
    case ":${PATH}:" in *":${bin}:"*) ;; *) export PATH="${bin}:${PATH}" ;; esac
}

# kind_available: why kind cannot run here (one line on stdout, exit 1), or exit 0.
kind_available() {
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    if [[ "$(id -u)" != 0 ]]; then
        echo "no Docker engine runs and this user cannot start one (not root)"
        return 1
    fi
    if ! command -v dockerd >/dev/null && ! command -v apt-get >/dev/null; then
        echo "no Docker engine, and no apt-get to install one"
        return 1
    fi
    if [[ ! -d /sys/fs/cgroup ]] || ! grep -q '^cgroup' /proc/mounts; then
        echo "no cgroup file system: containers cannot run here"
        return 1
    fi
    return 0
}

kind_cluster_exists() {
    kind get clusters 2>/dev/null | grep -qx "${KIND_CLUSTER}"
}

# kind_create_cluster NODE_IMAGE: create the cluster (or reuse it) and write its kubeconfig.
kind_create_cluster() {
    local image="$1" repo
    repo="$(kind_lib_repo)"
    if kind_cluster_exists; then
        kind_step "cluster ${KIND_CLUSTER}: reusing it"
        kind get kubeconfig --name "${KIND_CLUSTER}" >"${KIND_KUBECONFIG}"
        return 0
    fi
    kind_step "cluster ${KIND_CLUSTER}: kind create cluster (control plane + 2 workers, ${image})"
    kind create cluster --name "${KIND_CLUSTER}" --config "${repo}/e2e/kind/cluster.yaml" \
        --image "${image}" --kubeconfig "${KIND_KUBECONFIG}" --wait 0s \
        >"${KIND_STATE}/create.log" 2>&1 \
        || { tail -30 "${KIND_STATE}/create.log" >&2; kind_fail "kind create cluster"; }
    kubectl --kubeconfig="${KIND_KUBECONFIG}" apply -f "${repo}/e2e/kind/pod-network-rbac.yaml" \
        >/dev/null
    kind_step "cluster ${KIND_CLUSTER}: nodes joined; waiting for them to be Ready"
}

# kind_wait_ready: every node Ready (the pod network is up), CoreDNS running, and each worker
# advertising its fake GPUs.
kind_wait_ready() {
    kubectl wait node --all --for=condition=Ready --timeout=180s >/dev/null \
        || kind_fail "nodes not Ready: $(kubectl get nodes --no-headers 2>&1 | tr '\n' ';')"
    kubectl -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null \
        || kind_fail "CoreDNS is not running"
    local node
    while read -r node; do
        kubectl wait node "${node}" --timeout=120s \
            --for='jsonpath={.status.allocatable.nvidia\.com/gpu}=4' >/dev/null \
            || kind_fail "${node} does not advertise 4 nvidia.com/gpu"
    done < <(kind_workers)
    kind_step "cluster ${KIND_CLUSTER}: 3 nodes Ready, CoreDNS up, 2 workers × 4 nvidia.com/gpu"
}

# kind_build_images: the operator and worker images from their own Dockerfiles, on a locally
# made Python base (e2e/kind/images.sh); the Docker layer cache makes a warm build quick.
kind_build_images() {
    local repo
    repo="$(kind_lib_repo)"
    bash "${repo}/e2e/kind/images.sh" "${OPERATOR_IMAGE}" "${WORKER_IMAGE}"
}

# kind_load_images: both images into the workers (the control plane runs no paraserve pod),
# with `kind load`. kind load keeps an image twice in each node (its layers and their unpacked
# snapshot) and once more in a temporary archive: for the worker image (torch) that can be
# more disk than the host has free, so then it is streamed into each node's containerd instead
# (docker save | ctr import --discard-unpacked-layers), which keeps one unpacked copy per node.
kind_load_images() {
    local nodes node size free
    nodes="$(kind_workers | paste -sd, -)"
    kind_step "kind load ${OPERATOR_IMAGE} (into ${nodes})"
    kind load docker-image --name "${KIND_CLUSTER}" --nodes "${nodes}" "${OPERATOR_IMAGE}" \
        >"${KIND_STATE}/load.log" 2>&1 \
        || { tail -20 "${KIND_STATE}/load.log" >&2; kind_fail "kind load ${OPERATOR_IMAGE}"; }
    size=$(($(docker image inspect -f '{{.Size}}' "${WORKER_IMAGE}") / 1048576))
    free=$(($(df -Pk "${KIND_CACHE}" | awk 'NR == 2 {print $4}') / 1024))
    if ((free > size * 6 + 10240)); then
        kind_step "kind load ${WORKER_IMAGE} (${size} MiB, into ${nodes})"
        kind load docker-image --name "${KIND_CLUSTER}" --nodes "${nodes}" "${WORKER_IMAGE}" \
            >>"${KIND_STATE}/load.log" 2>&1 \
            || { tail -20 "${KIND_STATE}/load.log" >&2; kind_fail "kind load ${WORKER_IMAGE}"; }
    else
        local id
        id="$(docker image inspect -f '{{.Id}}' "${WORKER_IMAGE}")"
        for node in $(kind_workers); do
            if docker exec "${node}" crictl images --no-trunc -q 2>/dev/null | grep -qx "${id}"; then
                kind_say "${node} has ${WORKER_IMAGE} already"
                continue
            fi
            kind_step "${WORKER_IMAGE} (${size} MiB) into ${node}: streamed, as ${free} MiB free" \
                "is too little for kind load"
            docker save "${WORKER_IMAGE}" | docker exec -i "${node}" ctr -n k8s.io images import \
                --local --digests --snapshotter=overlayfs --discard-unpacked-layers - \
                >>"${KIND_STATE}/load.log" 2>&1 \
                || { tail -20 "${KIND_STATE}/load.log" >&2; kind_fail "loading ${WORKER_IMAGE}"; }
        done
    fi
    kind_step "images loaded"
}

# kind_bring_up: everything up to a cluster with both images loaded, KUBECONFIG exported: the
# engine, the cluster binaries, the node image, the tools, the images, the cluster.
kind_bring_up() {
    local repo node_image
    repo="$(kind_lib_repo)"
    bash "${repo}/e2e/kind/engine.sh" up
    kind_step "cluster binaries (kubectl, helm, the control plane's images)"
    kind_python -m e2e.cluster build 2>&1 | sed 's/^/             /' >&2
    node_image="$(kind_python -m e2e.kind node-image)" || kind_fail "the node image"
    kind_tools || kind_fail "kind, kubectl or helm missing after the build"
    kind_build_images
    # From here on a run is warm: `make test` runs kind (e2e/kind/if-warm.sh).
    echo "${node_image}" >"${KIND_CACHE}/warm"
    export KUBECONFIG="${KIND_KUBECONFIG}"
    kind_create_cluster "${node_image}"
    kind_wait_ready
    kind_load_images
}

# kind_fake_gpus NODE COUNT [POOL]: make NODE a COUNT-GPU node (the demo's pools): the node
# image's device plugin stand-in advertises COUNT nvidia.com/gpu through kubelet, and the GPU
# feature discovery labels follow.
kind_fake_gpus() {
    local node="$1" count="$2" pool="${3:-}"
    docker exec "${node}" sh -c "mkdir -p /etc/paraserve && echo ${count} >/etc/paraserve/fake-gpus"
    kubectl label node "${node}" --overwrite >/dev/null \
        nvidia.com/gpu.present=true \
        "nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB" \
        "nvidia.com/gpu.memory=81920" \
        "nvidia.com/gpu.count=${count}"
    if [[ -n "${pool}" ]]; then
        kubectl label node "${node}" --overwrite "paraserve.dev/pool=${pool}" >/dev/null
    fi
    kubectl wait node "${node}" --timeout=60s \
        --for="jsonpath={.status.allocatable.nvidia\.com/gpu}=${count}" >/dev/null
}

# kind_workers: the worker nodes' names, one a line.
kind_workers() {
    kubectl get nodes -l '!node-role.kubernetes.io/control-plane' \
        -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'
}

# kind_install_chart NAMESPACE [HELM_ARGS…]: the chart with the images just loaded, the
# webhook on (self-managed, through its Service), in a namespace that enforces Pod Security
# `restricted`.
kind_install_chart() {
    local namespace="$1" repo
    shift
    repo="$(kind_lib_repo)"
    kind_step "helm install paraserve into ${namespace} (webhook on, leader election on)"
    kubectl create namespace "${namespace}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    kubectl label namespace "${namespace}" --overwrite \
        pod-security.kubernetes.io/enforce=restricted >/dev/null
    helm upgrade --install paraserve "${repo}/charts/paraserve" --namespace "${namespace}" \
        --set "image.tag=${IMAGE_TAG}" \
        --set "workerImage.repository=${WORKER_REPOSITORY}" --set "workerImage.tag=${IMAGE_TAG}" \
        --set webhook.enabled=true "$@" --wait --timeout 5m >"${KIND_STATE}/helm.log" 2>&1 \
        || { tail -20 "${KIND_STATE}/helm.log" >&2
             kubectl -n "${namespace}" get pods -o wide >&2
             kind_fail "helm install"; }
    kubectl wait validatingwebhookconfiguration paraserve.dev --for=create --timeout=90s \
        >/dev/null 2>&1 || kind_fail "the operator did not register its webhook"
    kind_step "paraserve installed: $(kubectl -n "${namespace}" get pods -l \
        app.kubernetes.io/name=paraserve -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase} on {.spec.nodeName}{end}')"
}
