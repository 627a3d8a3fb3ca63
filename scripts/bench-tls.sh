#!/usr/bin/env bash
# The TLS edge benchmark: nginx and the gateway each terminating TLS with
# the same certificate (made here, self-signed, with openssl) in front of the
# same small upstream, on a public route without rate limits, driven by wrk
# with the same settings. Installs nginx and wrk from Debian's packages when
# they are missing. Needs no other service: the route checks no token.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
target="${CARGO_TARGET_DIR:-target}"
# The build under test: the release profile's, or BENCH_PROFILE's
# (the smoke run's bench-smoke, built without fat LTO).
bins="$target/${BENCH_PROFILE:-release}"
upstream_port=4196
nginx_port=4197
gateway_port=4198

# wrk, nginx, `work`, `pids` and their cleanup.
source scripts/bench-common.sh

# One certificate for both: ECDSA P-256, as a modern deployment would use.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

"$bins/gatehouse-bench" --serve-upstream "$upstream_port" &
pids+=($!)

# nginx terminating TLS the usual way: a worker per core, session cache,
# keep-alive connections to the upstream, no access log.
start_nginx nginx "127.0.0.1:$nginx_port ssl http2" "" "
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;"

cat >"$work/gateway.toml" <<CONF
[log]
level = "warn"
format = "json"

[registry]
backend = "static"

[registry.instances]
bench = ["http://127.0.0.1:$upstream_port"]

[gateway]
listen = "127.0.0.1:$gateway_port"

[gateway.tls]
cert_file = "$work/cert.pem"
key_file = "$work/key.pem"

[[gateway.routes]]
prefix = "/bench/public"
service = "bench"
auth = "public"
rate_limit = false
CONF
start_gateway

wait_up "http://127.0.0.1:$upstream_port/" "https://localhost:$nginx_port/" \
    "https://localhost:$gateway_port/healthz"

"$bins/gatehouse-bench" --seconds "$seconds" --edge-tls \
    "https://localhost:$nginx_port" "https://localhost:$gateway_port"
