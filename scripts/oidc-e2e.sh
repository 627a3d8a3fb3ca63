#!/usr/bin/env bash
# The OpenID Connect provider end to end, with real client libraries: a
# relying party built on requests-oauth2client (PyPI), whose users sign in
# in headless Chromium driven by selenium through chromedriver (Debian's
# chromium and chromium-driver). The tests are tests/oidc-e2e/.
#
#   scripts/oidc-e2e.sh install   install Chromium, chromedriver and the
#                                 tests' Python environment when missing
#   scripts/oidc-e2e.sh run       start two all-in-one platforms (one behind
#                                 the gateway's TLS with a test certificate,
#                                 one on plain http at a loopback address)
#                                 and run the tests against them
#   scripts/oidc-e2e.sh run-separate
#                                 the same, each platform made of the five
#                                 service binaries as processes of their own
#                                 on PostgreSQL (a fresh database each, at
#                                 DATABASE_URL's server), wired by the static
#                                 registry, the outbox bus and service keys
#
# `run` takes the binary from GATEHOUSE_BIN (default
# $CARGO_TARGET_DIR/debug/gatehouse); `run-separate` takes the service
# binaries and `gatehouse` (for the operator's commands) from
# GATEHOUSE_BIN_DIR (default $CARGO_TARGET_DIR/debug), built with the
# postgres feature. Copies run, so a build during the run does not change
# them underneath. Arguments after the mode go to pytest (`run -k logout`).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${GATEHOUSE_TOOLS:-$HOME/.cache/gatehouse}"
venv="$cache/oidc-venv"
requirements="tests/oidc-e2e/requirements.txt"
target="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
binary="${GATEHOUSE_BIN:-$target/debug/gatehouse}"
bin_dir="${GATEHOUSE_BIN_DIR:-$target/debug}"
database_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
# psql says only what went wrong.
export PGOPTIONS="-c client_min_messages=warning"
services=(identity auth authz audit gateway)
# all-in-one, or separate (run-separate).
topology="all-in-one"

install() {
    local missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}"
        local sudo=""
        if [ "$(id -u)" -ne 0 ]; then
            sudo="sudo"
        fi
        if ! $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
            $sudo apt-get update -qq
            $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        fi
    fi
    # The environment is made again whenever the pinned list changes.
    local stamp="$venv/requirements.txt"
    if ! cmp -s "$requirements" "$stamp" 2>/dev/null; then
        echo "installing $requirements into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$requirements"
        cp "$requirements" "$stamp"
    fi
}


# free_ports N: N different ports free on loopback now.
free_ports() {
    python3 -c 'import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))' "$1"
}

# A test CA and a certificate it signs for 127.0.0.1 and localhost.
make_certificate() {
    local dir="$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=gatehouse oidc-e2e test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -out "$dir/server.pem" -extfile <(printf '%s\n' \
        "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" \
        "authorityKeyIdentifier=keyid" \
        "subjectKeyIdentifier=hash") 2>/dev/null
}

# write_config DIR SCHEME: DIR's configuration on fresh ports; sets
# $issuer.
write_config() {
    local dir="$1" scheme="$2" ports
    read -r -a ports <<<"$(free_ports 5)"
    issuer="$scheme://127.0.0.1:${ports[0]}"
    cat >"$dir/gatehouse.toml" <<EOF
data_dir = "$dir/data"

[log]
level = "warn"
format = "json"

[server]
public_url = "$issuer"
ops_listen = "127.0.0.1:0"

[gateway]
listen = "127.0.0.1:${ports[0]}"

# Every request here comes from one address, the browser's and the
# relying party's alike.
[gateway.rate_limit]
per_ip_per_sec = 0

[identity]
listen = "127.0.0.1:${ports[1]}"

[identity.scrypt]
log_n = 4
allow_weak_hashing_for_tests = true

[auth]
listen = "127.0.0.1:${ports[2]}"

[authz]
listen = "127.0.0.1:${ports[3]}"

[audit]
listen = "127.0.0.1:${ports[4]}"
EOF
    if [ "$topology" = separate ]; then
        local database
        database="gatehouse_oidc_e2e_$(basename "$dir")_$$"
        psql -q "$database_url" -c "DROP DATABASE IF EXISTS $database" -c "CREATE DATABASE $database"
        echo "$database" >"$dir/database"
        "$work/gatehouse" credentials issue --out "$dir/credentials" >/dev/null
        cat >>"$dir/gatehouse.toml" <<EOF

[database]
backend = "postgres"
url = "${database_url%/*}/$database"

[registry]
backend = "static"

[registry.instances]
identity = ["http://127.0.0.1:${ports[1]}"]
auth = ["http://127.0.0.1:${ports[2]}"]
authz = ["http://127.0.0.1:${ports[3]}"]
audit = ["http://127.0.0.1:${ports[4]}"]

[bus]
backend = "outbox"

[rpc]
credentials_dir = "$dir/credentials"
EOF
    fi
    if [ "$scheme" = https ]; then
        cat >>"$dir/gatehouse.toml" <<EOF

[gateway.tls]
cert_file = "$work/certs/server.pem"
key_file = "$work/certs/server.key"
EOF
    fi
}

# spawn DIR BINARY: starts BINARY on DIR's configuration, its log in DIR.
spawn() {
    "$work/$2" --config "$1/gatehouse.toml" >"$1/$2.log" 2>&1 &
    echo $! >>"$1/pids"
}

# ready DIR URL...: waits until every URL answers, while every process of
# DIR runs; fails when one stopped.
ready() {
    local dir="$1" url pid
    shift
    for _ in $(seq 1 300); do
        for pid in $(cat "$dir/pids"); do
            kill -0 "$pid" 2>/dev/null || return 1
        done
        for url in "$@"; do
            curl -fs --cacert "$work/certs/ca.pem" "$url" >/dev/null 2>&1 || continue 2
        done
        return 0
    done
    echo "not ready within 60 s: $*" >&2
    return 1
}

# stop DIR: stops DIR's processes, waits for them to end, and drops the
# database they had.
stop() {
    local pid
    for pid in $(cat "$1/pids" 2>/dev/null); do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in $(cat "$1/pids" 2>/dev/null); do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    done
    rm -f "$1/pids"
    if [ -f "$1/database" ]; then
        psql -q "$database_url" -c "DROP DATABASE IF EXISTS $(cat "$1/database")" || true
        rm -f "$1/database"
    fi
}

# start DIR: the platform's processes on DIR's configuration; prints the
# services' own readiness URLs, which answer once each is up.
start() {
    local dir="$1" service port
    if [ "$topology" = separate ]; then
        for service in "${services[@]}"; do
            spawn "$dir" "gatehouse-$service"
            port="$(sed -n "/^\[$service\]\$/,/^listen/ s/^listen = \"127.0.0.1:\([0-9]*\)\"/\1/p" "$dir/gatehouse.toml")"
            [ "$service" = gateway ] || echo "http://127.0.0.1:$port/readyz"
        done
    else
        spawn "$dir" gatehouse
    fi
}

# deploy NAME SCHEME: the all-in-one platform in $work/NAME; sets $issuer.
# A port that another process took between choosing and binding means
# another try on other ports.
deploy() {
    local name="$1" scheme="$2" dir="$work/$1"
    for _ in 1 2 3; do
        mkdir -p "$dir/data"
        write_config "$dir" "$scheme"
        local probes
        probes="$(start "$dir")"
        # shellcheck disable=SC2086 # one URL a word
        if ready "$dir" $probes "$issuer/readyz" "$issuer/.well-known/openid-configuration"; then
            echo "$name platform ($topology) ready at $issuer"
            return
        fi
        stop "$dir"
        if ! grep -q "Address already in use" "$dir"/*.log; then
            cat "$dir"/*.log >&2
            exit 1
        fi
        echo "$name: a port was taken; trying others"
        rm -rf "$dir"
    done
    echo "$name: no free ports after three tries" >&2
    exit 1
}

run() {
    install
    if [ ! -x "$binary" ]; then
        echo "no gatehouse binary at $binary (build it, or set GATEHOUSE_BIN)" >&2
        exit 1
    fi
    local service
    if [ "$topology" = separate ]; then
        for service in "${services[@]}"; do
            if [ ! -x "$bin_dir/gatehouse-$service" ]; then
                echo "no gatehouse-$service in $bin_dir (build it with the postgres feature)" >&2
                exit 1
            fi
        done
    fi
    work="$(mktemp -d)"
    trap 'for d in "$work"/*/; do stop "$d"; done; rm -rf "$work"' EXIT
    cp "$binary" "$work/gatehouse"
    if [ "$topology" = separate ]; then
        for service in "${services[@]}"; do
            cp "$bin_dir/gatehouse-$service" "$work/"
        done
    fi
    mkdir "$work/certs"
    make_certificate "$work/certs"

    deploy tls https
    export OIDC_E2E_TLS_ISSUER="$issuer" OIDC_E2E_TLS_CONFIG="$work/tls/gatehouse.toml"
    deploy loopback http
    export OIDC_E2E_LOOPBACK_ISSUER="$issuer" OIDC_E2E_LOOPBACK_CONFIG="$work/loopback/gatehouse.toml"
    export OIDC_E2E_BIN="$work/gatehouse" OIDC_E2E_CA="$work/certs/ca.pem"
    export OIDC_E2E_CERT="$work/certs/server.pem" OIDC_E2E_KEY="$work/certs/server.key"

    local status=0 log
    # Nothing written into the clone: no bytecode, no pytest cache.
    PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest tests/oidc-e2e -p no:cacheprovider "$@" || status=$?
    if [ "$status" -ne 0 ]; then
        for log in "$work"/*/*.log; do
            if grep -q '"level":"ERROR"' "$log"; then
                echo "--- errors in $log"
                grep '"level":"ERROR"' "$log" | tail -20
            fi
        done
    fi
    return "$status"
}

case "${1:-}" in
    install) install ;;
    run) shift; run "$@" ;;
    run-separate) shift; topology=separate; binary="$bin_dir/gatehouse"; run "$@" ;;
    *) echo "usage: $0 install|run|run-separate [pytest arguments]" >&2; exit 2 ;;
esac
