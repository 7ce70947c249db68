#!/bin/bash
# The pod network of paraserve's kind nodes, in place of kindnet (which no registry here has):
# each node's pods get addresses from the node's spec.podCIDR (ptp + host-local, as kindnet
# configures them), and every node routes the other nodes' pod CIDRs to those nodes over the
# kind network. It reads the nodes with kubelet's own credentials, every few seconds.
set -uo pipefail
conf=/etc/cni/net.d/10-paraserve.conflist
kubeconfig=/etc/kubernetes/kubelet.conf
node="$(hostname)"

write_conf() {
    local cidr="$1" next="${conf}.next"
    cat >"${next}" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "paraserve",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "/run/cni-ipam-state",
        "routes": [{"dst": "0.0.0.0/0"}],
        "ranges": [[{"subnet": "${cidr}"}]]
      },
      "mtu": 1500
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
    if ! cmp -s "${next}" "${conf}"; then
        mv "${next}" "${conf}"
        echo "pod network: ${node} has ${cidr}"
    else
        rm -f "${next}"
    fi
}

while true; do
    if [[ -f "${kubeconfig}" ]]; then
        kubectl --kubeconfig="${kubeconfig}" get nodes --request-timeout=5s -o \
            jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' \
            2>/dev/null | while read -r name cidr address; do
            [[ -n "${cidr}" && -n "${address}" ]] || continue
            if [[ "${name}" == "${node}" ]]; then
                write_conf "${cidr}"
            elif [[ "$(ip route show "${cidr}")" != *"via ${address} "* ]]; then
                ip route replace "${cidr}" via "${address}" && echo "pod network: ${cidr} via ${name}"
            fi
        done
    fi
    sleep 3
done
