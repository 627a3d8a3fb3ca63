#!/usr/bin/env bash
# A Kafka-protocol broker for the `it-kafka` tests and for trying the kafka
# bus by hand: tansu (crates.io), installed when missing and started on
# 127.0.0.1:9092 when nothing listens there.
#
#   scripts/kafka.sh install   build and install tansu when missing
#   scripts/kafka.sh start     install, then start it unless one answers
#   scripts/kafka.sh stop      stop the broker this script started
#
# The build takes about ten minutes on two cores; its output is kept under
# ~/.cache/gatehouse so a rebuild is incremental. tansu is built with two
# stores: in memory (`memory://tansu/`, what `start` uses: a restart empties
# it) and in a SQLite file (`sqlite://PATH`, which a restart keeps).
set -euo pipefail

version="0.6.0"
features="dynostore,libsql"
cache="${GATEHOUSE_CACHE:-$HOME/.cache/gatehouse}"
root="$cache/tools"
bin="$root/bin/tansu"
port="${KAFKA_PORT:-9092}"
pidfile="$cache/tansu.pid"
log="$cache/tansu.log"

listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

install() {
    local built="$root/tansu.features"
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$version" \
        && [ "$(cat "$built" 2>/dev/null)" = "$features" ]; then
        return
    fi
    echo "installing tansu $version with $features (about ten minutes on two cores)"
    mkdir -p "$root"
    CARGO_TARGET_DIR="$cache/tansu-build" cargo install tansu --version "$version" \
        --locked --features "$features" --root "$root" --quiet --force
    echo "$features" >"$built"
}

start() {
    if listening; then
        return
    fi
    install
    mkdir -p "$cache"
    nohup "$bin" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >"$log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 100); do
        if listening; then
            echo "tansu listening on 127.0.0.1:$port"
            return
        fi
        sleep 0.1
    done
    echo "tansu did not start; see $log" >&2
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
