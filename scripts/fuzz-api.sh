#!/usr/bin/env bash
# Fuzzes the public API through the gateway, driven by the merged document at
# /openapi.json: schemathesis (from PyPI, installed into a virtual environment
# of its own when missing) runs every check, in every phase, stateful
# included, against the all-in-one platform on a scratch data directory,
# signed in as users made for the run. Fails on any finding.
#
# Usage: scripts/fuzz-api.sh [path to a built `gatehouse` binary]
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
binary="${1:-$target/debug/gatehouse}"
version="4.32.5"
venv="${GATEHOUSE_TOOLS:-$HOME/.cache/gatehouse}/venv"

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
    echo "installing schemathesis $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
gateway_port="$(free_port)"
identity_port="$(free_port)"
auth_port="$(free_port)"
authz_port="$(free_port)"
audit_port="$(free_port)"
data="$(mktemp -d)"
log="$data/platform.log"

# Cheap hashing, and limits that a fuzzer's pace does not reach: the run is
# about the API's contract, not its brakes (those have tests of their own).
GATEHOUSE_DATA_DIR="$data" \
GATEHOUSE_GATEWAY__LISTEN="127.0.0.1:$gateway_port" \
GATEHOUSE_IDENTITY__LISTEN="127.0.0.1:$identity_port" \
GATEHOUSE_AUTH__LISTEN="127.0.0.1:$auth_port" \
GATEHOUSE_AUTHZ__LISTEN="127.0.0.1:$authz_port" \
GATEHOUSE_AUDIT__LISTEN="127.0.0.1:$audit_port" \
GATEHOUSE_SERVER__OPS_LISTEN="127.0.0.1:0" \
GATEHOUSE_IDENTITY__SCRYPT__LOG_N=4 \
GATEHOUSE_IDENTITY__SCRYPT__ALLOW_WEAK_HASHING_FOR_TESTS=true \
GATEHOUSE_AUTHZ__REFRESH_MS=0 \
GATEHOUSE_IDENTITY__THROTTLE__FREE_FAILURES=1000000 \
GATEHOUSE_IDENTITY__THROTTLE__ADDRESS_FREE_FAILURES=1000000 \
GATEHOUSE_IDENTITY__THROTTLE__ACCOUNT_FREE_FAILURES=1000000 \
GATEHOUSE_GATEWAY__RATE_LIMIT__PER_IP_PER_SEC=1000000 \
GATEHOUSE_GATEWAY__RATE_LIMIT__PER_IP_BURST=1000000 \
GATEHOUSE_GATEWAY__RATE_LIMIT__PER_USER_PER_SEC=1000000 \
GATEHOUSE_GATEWAY__RATE_LIMIT__PER_USER_BURST=1000000 \
GATEHOUSE_LOG__FORMAT=json \
GATEHOUSE_LOG__LEVEL=warn \
    "$binary" >"$log" 2>&1 &
platform=$!
trap 'kill -TERM $platform 2>/dev/null || true; wait $platform 2>/dev/null || true; rm -rf "$data"' EXIT

base="http://127.0.0.1:$gateway_port"
for _ in $(seq 1 150); do
    if curl -fs "$base/readyz" >/dev/null 2>&1 && curl -fs "$base/openapi.json" >/dev/null 2>&1; then break; fi
    if ! kill -0 $platform 2>/dev/null; then cat "$log"; exit 1; fi
    sleep 0.2
done

# Signed-in operations get a user of their own, made an admin on the
# platform's data directory (see fuzz_hooks.py); authz reads such grants at
# once with refresh_ms = 0.
export FUZZ_GATEWAY="$base"
export FUZZ_BINARY="$binary"
export FUZZ_DATA_DIR="$data"
export SCHEMATHESIS_HOOKS=fuzz_hooks
export PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"
status=0
# ensure_resource_availability is left out: a member naming a group nobody
# made is 404 about that group, which the check reads as the group just
# created gone missing (POST /v1/authz/groups, then its members).
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "$base/openapi.json" \
    --checks all \
    --exclude-checks ensure_resource_availability \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "${FUZZ_EXAMPLES:-25}" \
    --seed "${FUZZ_SEED:-1}" \
    --generation-deterministic \
    --request-timeout 10 \
    --no-color \
    --report junit --report-dir "$target/fuzz-api-report" || status=$?
if [ "$status" -ne 0 ] && grep -q '"level":"ERROR"' "$log"; then
    echo "--- platform errors"
    grep '"level":"ERROR"' "$log" | tail -20
fi
exit "$status"
