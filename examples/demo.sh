#!/usr/bin/env bash
# paraserve in five minutes: a cluster with fake GPUs, the operator installed, the review's two
# strategies applied (the impossible one refused with its arithmetic, the other one running one
# rank per GPU), and a tiny model whose ranks really run and report what they measured.
#
#   make demo          # runs this with the project's venv on the PATH
#   make demo-down     # stops everything it started (or: bash examples/demo.sh down)
#
# The cluster is kind (where a Docker engine can run and kind's cache is warm) or else the local
# control plane built from Go modules (python -m e2e.cluster up), with kwok GPU nodes. The local
# control plane runs no containers: the operator runs as a local process there, authenticated as
# the ServiceAccount the Helm chart created, and the tiny model's ranks run as local `paraserve
# worker` processes (e2e/rankrunner.py). DEMO_CLUSTER=local|kind picks one.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo}"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"

NS=paraserve-demo
OPERATOR_NS=paraserve-system
IMPOSSIBLE=examples/review-pp8-tp2-sp2.yaml
FITTING=examples/review-pp4-tp2-sp2.yaml
TINY=examples/tiny-pp2-tp2-sp2.yaml
state="$(python -c 'from e2e.cluster.build import cache_root; print(cache_root())')/demo"
mkdir -p "${state}"

bold=$'\e[1m' dim=$'\e[2m' reset=$'\e[0m'
if [[ ! -t 1 ]]; then bold="" dim="" reset=""; fi
step() { printf '\n%s==> %s%s\n' "${bold}" "$*" "${reset}"; }
say() { printf '%s%s%s\n' "${dim}" "$*" "${reset}"; }
show() { printf '%s$ %s%s\n' "${bold}" "$*" "${reset}"; "$@"; }

# wait_for SECONDS WHAT COMMAND…: poll COMMAND until it succeeds.
wait_for() {
    local seconds="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "demo: timed out after ${seconds}s waiting for ${what}" >&2
            return 1
        fi
        sleep 1
    done
}

# stop_pidfile FILE: stop the process group (started with setsid) whose leader's pid is in FILE.
stop_pidfile() {
    local file="$1" pid
    [[ -f "${file}" ]] || return 0
    pid="$(cat "${file}")"
    if kill -0 "${pid}" 2>/dev/null; then
        kill -TERM -- "-${pid}" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-${pid}" 2>/dev/null || true
    fi
    rm -f "${file}"
}

down() {
    stop_pidfile "${state}/rankrunner.pid"
    stop_pidfile "${state}/operator.pid"
    if [[ "$(cat "${state}/mode" 2>/dev/null)" == kind ]]; then
        # shellcheck source=e2e/kind/lib.sh
        source "${repo}/e2e/kind/lib.sh"
        bash "${repo}/e2e/kind/down.sh" || true
    else
        python -m e2e.cluster down
    fi
    rm -f "${state}/mode"
    echo "demo: everything it started is stopped"
}

if [[ "${1:-}" == down ]]; then
    down
    exit 0
fi

# -- 1. a cluster -------------------------------------------------------------------------------

# shellcheck source=e2e/kind/lib.sh
source "${repo}/e2e/kind/lib.sh"
mode="${DEMO_CLUSTER:-}"
if [[ -z "${mode}" ]]; then
    # kind when a Docker engine can run here and kind's cache is warm (a cold one takes long).
    if kind_available >/dev/null && [[ -f "${KIND_CACHE}/warm" ]]; then mode=kind; else mode=local; fi
fi
echo "${mode}" >"${state}/mode"
# A demo run again starts clean: its earlier background processes go.
stop_pidfile "${state}/rankrunner.pid"
stop_pidfile "${state}/operator.pid"

if [[ "${mode}" == kind ]]; then
    step "A kind cluster (a Docker engine runs here): a control plane and two workers"
    kind_bring_up
    workers=()
    while read -r node; do workers+=("${node}"); done < <(kind_workers)
    step "Fake GPUs: ${workers[0]} becomes pool a100-80g (8 × A100 80 GB), ${workers[1]} pool tiny (4)"
    kind_fake_gpus "${workers[0]}" 8 a100-80g
    kind_fake_gpus "${workers[1]}" 4 tiny
    step "Install the CRD and the operator with Helm (webhook on)"
    kind_install_chart "${OPERATOR_NS}" \
        --set-json 'operator.extraEnv=[{"name":"PARASERVE_MEASURE_INTERVAL","value":"2"},{"name":"PARASERVE_MEASURE_WINDOW","value":"10"}]'
else
    step "The local control plane (kube-apiserver, etcd, scheduler, controller-manager, kwok)"
    say "No container runtime here (or no kind): Kubernetes built from its Go modules, GPU nodes by kwok."
    say "The first run builds the binaries (minutes); later runs reuse them."
    eval "$(python -m e2e.cluster up)"
    export KUBECONFIG PATH
    step "Fake GPU nodes: pool a100-80g (1 node × 8 A100 80 GB) and pool tiny (1 node × 4)"
    python -m e2e.gpunodes a100-80g "1 x 8 x A100-80GB" | kubectl apply -f -
    python -m e2e.gpunodes tiny "1 x 4 x A100-80GB" | kubectl apply -f -
    kubectl wait node -l paraserve.dev/pool --for=condition=Ready --timeout=120s >/dev/null
    step "Install the CRD and the operator with Helm"
    kubectl create namespace "${OPERATOR_NS}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    kubectl label namespace "${OPERATOR_NS}" --overwrite \
        pod-security.kubernetes.io/enforce=restricted >/dev/null
    # replicaCount=0: no container runs here, so the Deployment stays empty and the same
    # operator runs below as a local process, with the chart's ServiceAccount and RBAC.
    show helm upgrade --install paraserve charts/paraserve --namespace "${OPERATOR_NS}" \
        --set replicaCount=0 --set webhook.enabled=true | sed '/^NOTES:/,$d'
    step "Run the operator locally as the chart's ServiceAccount (TokenRequest token)"
    python -m e2e.install sa-kubeconfig "${OPERATOR_NS}" paraserve "${state}/operator.kubeconfig" >/dev/null
    port="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    # The local API server calls the webhook at https://127.0.0.1:PORT (URL mode).
    KUBECONFIG="${state}/operator.kubeconfig" \
        PARASERVE_MEASURE_INTERVAL=2 PARASERVE_MEASURE_WINDOW=10 PYTHONUNBUFFERED=1 \
        PARASERVE_MEASURE_ADDRESS_ANNOTATION=true \
        setsid paraserve operator --kubeconfig "${state}/operator.kubeconfig" \
        --leader-election-namespace "${OPERATOR_NS}" --health-port 0 --metrics-port 0 \
        --log-format plain --webhook self-managed --webhook-host 127.0.0.1 \
        --webhook-address 127.0.0.1 --webhook-port "${port}" \
        </dev/null >"${state}/operator.log" 2>&1 &
    echo $! >"${state}/operator.pid"
    say "operator pid $(cat "${state}/operator.pid"), log ${state}/operator.log"
fi

kubectl create namespace "${NS}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl delete infd --all -n "${NS}" --wait=true --timeout=60s >/dev/null 2>&1 || true
wait_for 60 "the default ServiceAccount in ${NS}" kubectl get serviceaccount default -n "${NS}"

# Waits until the webhook is registered and has seen the pool, else the reconcile refuses.
webhook_knows_pool() {
    ! kubectl apply --dry-run=server -n "${NS}" -f "${IMPOSSIBLE}" >/dev/null 2>&1
}
if ! wait_for 90 "the admission webhook" webhook_knows_pool; then
    say "(the webhook is not answering: the refusal will come from the reconcile instead)"
fi

# -- 2. the impossible strategy ---------------------------------------------------------------

step "The review's first strategy: PP=8 × TP=2 × SP=2 on one node of 8 GPUs"
say "SP shards activations inside each TP group: it adds no GPUs. PP=8 × TP=2 = 16 GPUs."
printf '%s$ kubectl apply -n %s -f %s%s\n' "${bold}" "${NS}" "${IMPOSSIBLE}" "${reset}"
if kubectl apply -n "${NS}" -f "${IMPOSSIBLE}" 2>"${state}/refusal.txt"; then
    say "(admitted: the webhook is off; the operator refuses it as phase Rejected)"
    impossible_name="$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["name"])' "${IMPOSSIBLE}")"
    rejected() { [[ "$(kubectl get infd "${impossible_name}" -n "${NS}" -o jsonpath='{.status.phase}')" == Rejected ]]; }
    wait_for 60 "phase Rejected" rejected
    kubectl get infd "${impossible_name}" -n "${NS}" \
        -o jsonpath='{range .status.conditions[?(@.type=="Validated")]}{.reason}: {.message}{"\n"}{end}'
else
    sed 's/^/    /' "${state}/refusal.txt"
fi

# -- 3. the strategy that fits ----------------------------------------------------------------

step "The corrected strategy: PP=4 × TP=2 × SP=2 = 8 GPUs. The plan, against the live cluster:"
kubectl get nodes,pods -A -o yaml >"${state}/snapshot.yaml"
show paraserve plan -f "${FITTING}" --nodes "${state}/snapshot.yaml" || true

fitting_name="$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["name"])' "${FITTING}")"
step "Deploy it"
if [[ "${mode}" == kind ]]; then
    say "(a 70B model cannot run on kind's CPUs: its rank containers idle with sleep infinity)"
    python -c '
import sys, yaml
body = yaml.safe_load(open(sys.argv[1]))
body["spec"]["worker"] = {"command": ["sleep", "infinity"]}
print(yaml.safe_dump(body))' "${FITTING}" | kubectl apply -n "${NS}" -f -
else
    show kubectl apply -n "${NS}" -f "${FITTING}"
fi
fitting_running() {
    [[ "$(kubectl get infd "${fitting_name}" -n "${NS}" -o jsonpath='{.status.phase}')" =~ ^(Running|Ready)$ ]]
}
wait_for 180 "${fitting_name} Running" fitting_running

step "One pod per rank, one GPU each; each TP group on one node"
show kubectl get pods -n "${NS}" -l "paraserve.dev/deployment=${fitting_name}" \
    -L paraserve.dev/rank,paraserve.dev/pp-rank,paraserve.dev/tp-rank,paraserve.dev/tp-group \
    -o wide
say "rank 5's environment (torch.distributed's contract plus the topology):"
kubectl get pod "${fitting_name}-0-5" -n "${NS}" \
    -o jsonpath='{range .spec.containers[0].env[*]}{"    "}{.name}={.value}{"\n"}{end}' \
    | grep -E 'RANK|WORLD|MASTER|PARASERVE_(PP|TP|SP)|STAGE' || true
show kubectl get infd -n "${NS}"

# -- 4. a model that really runs, measured on its ranks ---------------------------------------

tiny_name="$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["name"])' "${TINY}")"
step "Measured, not estimated: a tiny model on PP=2 × TP=2 × SP=2 whose ranks really run"
if [[ "${mode}" == local ]]; then
    say "kwok runs no containers: e2e/rankrunner.py runs each rank pod's own paraserve worker"
    say "locally, with the pod's environment; the operator scrapes their /metrics."
    setsid python -m e2e.rankrunner "${KUBECONFIG}" "${NS}" "${tiny_name}" "${state}/ranks" \
        </dev/null >"${state}/rankrunner.log" 2>&1 &
    echo $! >"${state}/rankrunner.pid"
fi
show kubectl apply -n "${NS}" -f "${TINY}"
# Latencies come with the first scrape; throughput needs a second one (a rate over a window).
# The first window may close before rank 0 completes a request: wait for one that saw traffic.
measured() {
    local rps
    rps="$(kubectl get infd "${tiny_name}" -n "${NS}" -o jsonpath='{.status.measured.throughputRps}')"
    [[ -n "${rps}" && "${rps}" != 0 ]]
}
if wait_for 420 "status.measured of ${tiny_name}" measured; then
    show kubectl get infd "${tiny_name}" -n "${NS}" -o jsonpath='{.status.measured}'
    echo
    kubectl get infd "${tiny_name}" -n "${NS}" \
        -o jsonpath='{range .status.conditions[?(@.type=="MeetsSLO")]}MeetsSLO={.status} ({.reason}): {.message}{"\n"}{end}'
else
    say "(no measurement yet: see ${state}/rankrunner.log and the operator's log)"
fi

# -- 5. where things stand ----------------------------------------------------------------------

step "Where things stand"
show kubectl get infd -n "${NS}"
say "${IMPOSSIBLE} was refused: no such deployment, no pods."

cat <<EOF

${bold}Look around${reset}
  export KUBECONFIG=${KUBECONFIG}
EOF
if [[ "${mode}" == local ]]; then
    echo "  export PATH=$(dirname "$(command -v kubectl)"):\$PATH   # kubectl and helm"
fi
cat <<EOF
  kubectl get infd,pods -n ${NS}
  kubectl describe infd ${fitting_name} -n ${NS}        # conditions, plan, Events
  kubectl get infd ${tiny_name} -n ${NS} -o yaml        # status.measured vs status.plan
  paraserve plan -f ${IMPOSSIBLE} --nodes ${state}/snapshot.yaml --suggest
EOF
if [[ "${mode}" == local ]]; then
    echo "  less ${state}/operator.log"
fi
cat <<EOF

${bold}Tear down${reset}
  make demo-down        # stops the operator, the ranks and the cluster
EOF
