#!/usr/bin/env bash
# The edge benchmark: the gateway next to nginx in front of the same small
# upstream. Needs the platform's auth and identity running (scripts/bench.sh
# starts them) for the token of the `required` route. Installs nginx and wrk
# from Debian's packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
target="${CARGO_TARGET_DIR:-target}"
# The build under test: the release profile's, or BENCH_PROFILE's
# (the smoke run's bench-smoke, built without fat LTO).
bins="$target/${BENCH_PROFILE:-release}"
upstream_port=4190
nginx_port=4191
gateway_port=4192
bare_port=4193
nginx_pinned_port=4195

# wrk, nginx, `work`, `pids` and their cleanup.
source scripts/bench-common.sh

"$bins/gatehouse-bench" --serve-upstream "$upstream_port" &
pids+=($!)
"$bins/gatehouse-bench" --serve-bare-proxy "$bare_port" --bare-upstream "127.0.0.1:$upstream_port" &
pids+=($!)

# nginx as a reverse proxy tuned the usual way: a worker per core,
# keep-alive connections to the upstream, no access log. A second one, for
# reference, has its workers pinned to CPUs, as the gateway's I/O threads are.
start_nginx nginx "127.0.0.1:$nginx_port" "" ""
start_nginx nginx-pinned "127.0.0.1:$nginx_pinned_port" "worker_cpu_affinity auto;" ""

# The gateway on its own, finding auth and the upstream in a static registry.
cat >"$work/gateway.toml" <<CONF
[log]
level = "warn"
format = "json"

[registry]
backend = "static"

[registry.instances]
auth = ["http://127.0.0.1:4101"]
bench = ["http://127.0.0.1:$upstream_port"]

[gateway]
listen = "127.0.0.1:$gateway_port"

[gateway.rate_limit]
per_ip_per_sec = 1000000
per_ip_burst = 1000000
per_user_per_sec = 1000000
per_user_burst = 1000000

# (c): proxying alone, as nginx does it. (f): the same with the
# per-address rate limit. (d): a token and the per-user rate limit.
[[gateway.routes]]
prefix = "/bench/public"
service = "bench"
auth = "public"
rate_limit = false

[[gateway.routes]]
prefix = "/bench/limited"
service = "bench"
auth = "public"

[[gateway.routes]]
prefix = "/bench/private"
service = "bench"
auth = "required"
CONF
start_gateway

wait_up "http://127.0.0.1:$upstream_port/" "http://127.0.0.1:$nginx_port/" \
    "http://127.0.0.1:$gateway_port/healthz" "http://127.0.0.1:$bare_port/" \
    "http://127.0.0.1:$nginx_pinned_port/"

"$bins/gatehouse-bench" --seconds "$seconds" --edge \
    "http://127.0.0.1:$upstream_port" "http://127.0.0.1:$nginx_port" "http://127.0.0.1:$gateway_port" \
    "http://127.0.0.1:$bare_port" "http://127.0.0.1:$nginx_pinned_port"
