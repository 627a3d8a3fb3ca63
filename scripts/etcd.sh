#!/usr/bin/env bash
# etcd for the `etcd` registry: its server for the `it-etcd` tests and for
# trying the registry by hand, and protoc, which building the `etcd`
# feature needs (its client is generated from etcd's protocol files).
# Both come from Debian's packages (etcd-server; protobuf-compiler and
# libprotobuf-dev, whose well-known types etcd's files import).
#
#   scripts/etcd.sh install   install etcd and protoc when missing
#   scripts/etcd.sh start     install, then start etcd on 127.0.0.1:2379
#                             unless something answers there
#   scripts/etcd.sh stop      stop the etcd this script started
#
# The tests start an etcd of their own on free ports; `start` keeps its
# data under ~/.cache/gatehouse/etcd.
set -euo pipefail

cache="${GATEHOUSE_CACHE:-$HOME/.cache/gatehouse}"
port="${ETCD_PORT:-2379}"
pidfile="$cache/etcd.pid"
log="$cache/etcd.log"

listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

install() {
    local missing=()
    command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
    command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
    # The well-known types etcd's protocol files import.
    [ -e /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
    if [ ${#missing[@]} -eq 0 ]; then
        return
    fi
    echo "installing ${missing[*]}"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    if ! $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

start() {
    if listening; then
        return
    fi
    install
    mkdir -p "$cache"
    nohup etcd --name gatehouse-dev --data-dir "$cache/etcd" \
        --listen-client-urls "http://127.0.0.1:$port" \
        --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
        --initial-cluster "gatehouse-dev=http://127.0.0.1:$((port + 1))" >"$log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 100); do
        if listening; then
            echo "etcd listening on 127.0.0.1:$port"
            return
        fi
        sleep 0.1
    done
    echo "etcd did not start; see $log" >&2
    exit 1
}

stop() {
    if [ -f "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    fi
}

case "${1:-start}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 [install|start|stop]" >&2; exit 2 ;;
esac
