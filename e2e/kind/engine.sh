#!/usr/bin/env bash
# A Docker engine for kind, where none runs: installed with apt when absent, started by hand,
# stopped by the pid it recorded, and the host put back as it was.
#
#   bash e2e/kind/engine.sh up       # use the running engine, or install and start one
#   bash e2e/kind/engine.sh down     # stop the engine this script started; restore the host
#   bash e2e/kind/engine.sh status
#
# The engine keeps its images in ${cache}/docker (the cache of node and product images), so a
# later start reuses them. Where this host's capability bounding set lacks capabilities that a
# privileged container asks for (kind's nodes are privileged), runc cannot apply them; the engine
# then runs containers through e2e/kind/runc-caps, which drops exactly those. Before the first
# start the host's iptables rules and forwarding settings are saved; `down` puts them back and
# deletes the bridge the engine made.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/kind/lib.sh
source "${here}/lib.sh"

engine_dir="${KIND_STATE}/engine"
pidfile="${engine_dir}/dockerd.pid"
saved="${engine_dir}/host-before"
data_root="${KIND_CACHE}/docker"
socket=/var/run/docker.sock

# The capability names by bit, as runc spells them.
CAPS=(CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID
    CAP_SETUID CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST
    CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO
    CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_NICE
    CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD CAP_LEASE CAP_AUDIT_WRITE
    CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG CAP_WAKE_ALARM
    CAP_BLOCK_SUSPEND CAP_AUDIT_READ CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE)

# missing_caps: the capabilities runc knows that this process's bounding set lacks.
missing_caps() {
    local bounding bit
    bounding="$(awk '/^CapBnd:/ {print $2}' /proc/self/status)"
    for bit in "${!CAPS[@]}"; do
        if (((0x${bounding} >> bit & 1) == 0)); then
            printf '%s\n' "${CAPS[bit]}"
        fi
    done
}

our_pid() {
    local pid
    [[ -f "${pidfile}" ]] || return 1
    pid="$(cat "${pidfile}")"
    [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null \
        && [[ "$(cat "/proc/${pid}/comm" 2>/dev/null)" == dockerd ]] || return 1
    echo "${pid}"
}

# apt_install PACKAGE…: install what is absent, with no service started during the install.
apt_install() {
    local packages=("$@")
    ((${#packages[@]})) || return 0
    kind_step "installing ${packages[*]} with apt"
    if [[ "$(id -u)" != 0 ]]; then
        kind_fail "installing ${packages[*]} needs root"
    fi
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e "${policy}" ]]; then
        # No service starts during the install: this script starts the engine itself.
        printf '#!/bin/sh\nexit 101\n' >"${policy}"
        chmod 755 "${policy}"
        made_policy=1
    fi
    local status=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${packages[@]}"; } >"${engine_dir}/apt.log" 2>&1 || status=$?
    ((made_policy)) && rm -f "${policy}"
    ((status == 0)) || kind_fail "apt-get install ${packages[*]} failed (${engine_dir}/apt.log)"
    kind_step "installed ${packages[*]}"
}

install_engine() {
    local packages=()
    command -v dockerd >/dev/null || packages+=(docker.io)
    # nft: down removes the iptables-nft tables the engine created where the host had none.
    command -v nft >/dev/null || packages+=(nftables)
    apt_install "${packages[@]}"
}

# What the node image's builds need, engine or not: runc with seccomp (cgo and libseccomp's
# headers), the Debian base (debootstrap), and jq for these scripts.
install_build_packages() {
    local packages=()
    command -v jq >/dev/null || packages+=(jq)
    command -v pkg-config >/dev/null || packages+=(pkg-config)
    pkg-config --exists libseccomp 2>/dev/null || packages+=(libseccomp-dev)
    command -v debootstrap >/dev/null || packages+=(debootstrap)
    ((${#packages[@]} == 0)) || command -v apt-get >/dev/null \
        || kind_fail "${packages[*]} missing, and no apt-get to install them"
    apt_install "${packages[@]}"
}

# save_host: what the engine changes on the host, once, before its first start.
save_host() {
    [[ -d "${saved}" ]] && return 0
    mkdir -p "${saved}.partial"
    local tool key
    for tool in iptables ip6tables; do
        if command -v "${tool}-save" >/dev/null; then
            "${tool}-save" >"${saved}.partial/${tool}" 2>/dev/null || true
        fi
    done
    for key in net/ipv4/ip_forward net/ipv6/conf/all/forwarding net/ipv6/conf/default/forwarding \
        net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables; do
        if [[ -r "/proc/sys/${key}" ]]; then
            echo "${key} $(cat "/proc/sys/${key}")" >>"${saved}.partial/sysctl"
        fi
    done
    ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 >"${saved}.partial/links"
    # kind bind-mounts /lib/modules into its nodes; the engine makes the folder if it is absent.
    [[ -e /lib/modules ]] || touch "${saved}.partial/no-lib-modules"
    mv "${saved}.partial" "${saved}"
}

# restore_table TOOL TABLE: the table as it was saved, or empty with ACCEPT policies if the
# host had no rules in it.
restore_table() {
    local tool="$1" table="$2" before="${saved}/$1"
    if [[ -s "${before}" ]] && grep -q "^\*${table}\$" "${before}"; then
        awk -v t="*${table}" '$0 == t {on = 1} on {print} on && /^COMMIT/ {exit}' "${before}" \
            | "${tool}-restore"
        return
    fi
    "${tool}" -t "${table}" -F 2>/dev/null || return 0
    "${tool}" -t "${table}" -X 2>/dev/null || true
    local chain
    for chain in INPUT FORWARD OUTPUT PREROUTING POSTROUTING; do
        "${tool}" -t "${table}" -P "${chain}" ACCEPT 2>/dev/null || true
    done
    if command -v nft >/dev/null; then  # iptables-nft leaves an empty table behind
        local family=ip
        [[ "${tool}" == ip6tables ]] && family=ip6
        nft delete table "${family}" "${table}" 2>/dev/null || true
    fi
}

restore_host() {
    [[ -d "${saved}" ]] || return 0
    local tool table key value link
    for tool in iptables ip6tables; do
        command -v "${tool}" >/dev/null || continue
        for table in $("${tool}-save" 2>/dev/null | sed -n 's/^\*//p'); do
            restore_table "${tool}" "${table}"
        done
    done
    while read -r key value; do
        echo "${value}" >"/proc/sys/${key}" 2>/dev/null || true
    done <"${saved}/sysctl"
    # Bridges and veths the engine made (docker0, br-…), not links the host had.
    for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do
        if ! grep -qx "${link}" "${saved}/links" && [[ "${link}" == docker0 || "${link}" == br-* \
            || "${link}" == veth* ]]; then
            ip link delete "${link}" 2>/dev/null || true
        fi
    done
    if [[ -f "${saved}/no-lib-modules" ]]; then
        rmdir /lib/modules 2>/dev/null || true
    fi
    rm -rf "${saved}"
}

# runtime_args: the engine's runtime flags; the wrapper only where capabilities are missing.
runtime_args() {
    local missing
    missing="$(missing_caps | paste -sd' ' -)"
    [[ -n "${missing}" ]] || return 0
    local wrapper="${engine_dir}/runc-caps"
    sed -e "s|@RUNC@|$(command -v runc)|" -e "s|@DROP@|${missing}|" \
        "${here}/runc-caps" >"${wrapper}.partial"
    chmod 755 "${wrapper}.partial"
    mv "${wrapper}.partial" "${wrapper}"
    printf '%s\n' "--add-runtime=paraserve-runc=${wrapper}" "--default-runtime=paraserve-runc"
    kind_say "this host's capability bounding set lacks ${missing}: containers run through runc-caps" >&2
}

up() {
    mkdir -p "${engine_dir}" "${data_root}"
    install_build_packages
    if pid="$(our_pid)"; then
        kind_step "reusing the engine started earlier (pid ${pid}, data in ${data_root})"
        return 0
    fi
    if docker info >/dev/null 2>&1; then
        kind_step "using the Docker engine already running here"
        return 0
    fi
    install_engine
    save_host
    kind_step "starting dockerd (data in ${data_root})"
    local args
    mapfile -t args < <(runtime_args)
    # setsid: the engine outlives this command until `down`; its pid is what stops it.
    setsid dockerd --data-root="${data_root}" --host="unix://${socket}" \
        --pidfile="${engine_dir}/dockerd.pidfile" --log-level=warn "${args[@]}" \
        </dev/null >"${engine_dir}/dockerd.log" 2>&1 &
    echo $! >"${pidfile}"
    local deadline=$((SECONDS + 60))
    until docker info >/dev/null 2>&1; do
        if ! kill -0 "$(cat "${pidfile}")" 2>/dev/null || ((SECONDS > deadline)); then
            tail -20 "${engine_dir}/dockerd.log" >&2
            down >/dev/null 2>&1 || true
            kind_fail "dockerd did not start (log: ${engine_dir}/dockerd.log)"
        fi
        sleep 0.5
    done
    kind_step "dockerd is up (pid $(cat "${pidfile}"), $(docker info --format \
        '{{.ServerVersion}}, {{.Driver}}, cgroup v{{.CgroupVersion}}, runtime {{.DefaultRuntime}}'))"
}

down() {
    local pid
    if pid="$(our_pid)"; then
        kind_step "stopping dockerd (pid ${pid})"
        kill -TERM "${pid}"
        local deadline=$((SECONDS + 60))
        while kill -0 "${pid}" 2>/dev/null; do
            if ((SECONDS > deadline)); then
                kill -KILL "${pid}" 2>/dev/null || true
            fi
            sleep 0.5
        done
    elif [[ ! -f "${pidfile}" ]]; then
        kind_say "no engine of ours is running"
    fi
    rm -f "${pidfile}" "${engine_dir}/dockerd.pidfile"
    # Mounts the engine can leave after a hard stop (overlays, netns files).
    local mount
    while read -r mount; do
        umount -l "${mount}" 2>/dev/null || true
    done < <(awk -v a="${data_root}" -v b=/run/docker \
        'index($2, a) == 1 || index($2, b) == 1 {print $2}' /proc/mounts | sort -r)
    # The engine's runtime state (its exec root); its data root is the cache and stays.
    if [[ -d "${saved}" ]] && ! pgrep -x dockerd >/dev/null; then
        rm -rf /run/docker || kind_say "could not remove /run/docker (still in use)"
    fi
    if [[ -d "${saved}" ]]; then
        restore_host
        kind_step "restored the host's iptables rules and forwarding settings"
    fi
}

status() {
    if pid="$(our_pid)"; then
        echo "engine: ours, pid ${pid}, data in ${data_root}"
    elif docker info >/dev/null 2>&1; then
        echo "engine: not ours, running"
    else
        echo "engine: none"
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
