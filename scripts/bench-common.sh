# Sourced by the edge benchmarks (bench-edge.sh, bench-tls.sh): installs
# wrk, nginx and openssl from Debian's packages when missing, sets
# nginx_bin, makes a scratch directory `work`, and stops every process whose
# pid is added to `pids` (and removes `work`) when the script exits. The
# gateway they start signs its calls with keys from
# GATEHOUSE_RPC__CREDENTIALS_DIR (bench.sh issues them for the platform it
# starts too), or else with keys issued here.

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${GATEHOUSE_RPC__CREDENTIALS_DIR:-}" ]; then
    "$target/release/gatehouse" credentials issue --out "$work/credentials" >/dev/null
    export GATEHOUSE_RPC__CREDENTIALS_DIR="$work/credentials"
fi
