#!/usr/bin/env bash
# `footprint`: gatehouse-bench starts the release binaries itself and reads
# their idle memory and the all-in-one's start. `authz`: it starts authz
# itself on a policy it writes. `flood`: it starts the all-in-one itself and
# floods it with abandoned sign-ins, then bursts of sign-ins and sign-ups. `audit`: it starts audit (and identity)
# itself on the local PostgreSQL, on the in-process bus and through the
# Kafka-protocol broker scripts/kafka.sh starts. Then, for `core` and `edge`,
# starts the all-in-one platform (release build) on a scratch data directory,
# runs the benchmarks against it (`core`: gatehouse-bench's scenarios,
# `edge`: scripts/bench-edge.sh, `oidc`: the OpenID Connect provider
# through the gateway) and stops it again. `tls`: the gateway and
# nginx over TLS (scripts/bench-tls.sh, needing no other service). `all`: the eight.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
what="${2:-all}"
target="${CARGO_TARGET_DIR:-target}"
# The build under test: the release profile's, or BENCH_PROFILE's
# (the smoke run's bench-smoke, built without fat LTO).
bins="$target/${BENCH_PROFILE:-release}"
if [ "$what" = all ] || [ "$what" = footprint ]; then
    "$bins/gatehouse-bench" --footprint "$bins"
fi
if [ "$what" = all ] || [ "$what" = flood ]; then
    "$bins/gatehouse-bench" --flood "$bins"
fi
if [ "$what" = all ] || [ "$what" = authz ]; then
    "$bins/gatehouse-bench" --authz --seconds "$seconds"
fi
if [ "$what" = all ] || [ "$what" = audit ]; then
    scripts/kafka.sh start
    "$bins/gatehouse-bench" --audit --seconds "$seconds"
fi
if [ "$what" = all ] || [ "$what" = tls ]; then
    scripts/bench-tls.sh "$seconds"
fi
if [ "$what" = footprint ] || [ "$what" = flood ] || [ "$what" = authz ] || [ "$what" = audit ] || [ "$what" = tls ]; then exit 0; fi

data="$(mktemp -d)"
log="$data/platform.log"
export GATEHOUSE_DATA_DIR="$data"
# The keys the platform and the separate gateway of the edge benchmark both
# sign and check their calls with.
"$bins/gatehouse" credentials issue --out "$data/credentials" >/dev/null
export GATEHOUSE_RPC__CREDENTIALS_DIR="$data/credentials"
export GATEHOUSE_LOG__FORMAT=json
export GATEHOUSE_LOG__LEVEL=warn
# `oidc` drives the provider through the gateway from one address: the
# per-address limits would measure themselves.
export GATEHOUSE_GATEWAY__RATE_LIMIT__PER_IP_PER_SEC=0
export GATEHOUSE_GATEWAY__RATE_LIMIT__PER_USER_PER_SEC=0

"$bins/gatehouse" >"$log" 2>&1 &
platform=$!
trap 'kill -TERM $platform 2>/dev/null || true; wait $platform 2>/dev/null || true; rm -rf "$data"' EXIT

for _ in $(seq 1 100); do
    if curl -fs http://127.0.0.1:4102/readyz >/dev/null 2>&1; then break; fi
    if ! kill -0 $platform 2>/dev/null; then cat "$log"; exit 1; fi
    sleep 0.2
done

if [ "$what" = all ] || [ "$what" = core ]; then
    "$bins/gatehouse-bench" --seconds "$seconds"
fi
if [ "$what" = all ] || [ "$what" = oidc ]; then
    "$bins/gatehouse-bench" --oidc --seconds "$seconds"
fi
if [ "$what" = all ] || [ "$what" = edge ]; then
    scripts/bench-edge.sh "$seconds"
fi
