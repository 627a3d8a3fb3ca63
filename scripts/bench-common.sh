# Sourced by the edge benchmarks (bench-edge.sh, bench-tls.sh): installs
# wrk, nginx and openssl from Debian's packages when missing, sets
# nginx_bin, makes a scratch directory `work`, and stops every process whose
# pid is added to `pids` (and removes `work`) when the script exits. The
# gateway they start signs its calls with keys from
# GATEHOUSE_RPC__CREDENTIALS_DIR (bench.sh issues them for the platform it
# starts too), or else with keys issued here. `start_nginx` starts an nginx
# proxying to the upstream on `upstream_port`, `start_gateway` the release
# gateway on `work/gateway.toml`, and `wait_up` waits for URLs to answer.

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
    "$bins/gatehouse" credentials issue --out "$work/credentials" >/dev/null
    export GATEHOUSE_RPC__CREDENTIALS_DIR="$work/credentials"
fi

# nginx as a reverse proxy tuned the usual way: a worker per core,
# keep-alive connections to the upstream, no access log. Arguments: a name
# (its directory under `work`), what follows `listen`, directives for the
# main context and for the server.
start_nginx() {
    local dir="$work/$1"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<CONF
worker_processes auto;
$3
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream bench { server 127.0.0.1:$upstream_port; keepalive 128; }
    server {
        listen $2;
        $4
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
CONF
    "$nginx_bin" -p "$dir" -c "$dir/nginx.conf" &
    pids+=($!)
}

# The release gateway on the config the script wrote to $work/gateway.toml.
start_gateway() {
    GATEHOUSE_DATA_DIR="$work" GATEHOUSE_SERVER__OPS_LISTEN=127.0.0.1:0 \
        "$bins/gatehouse-gateway" --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
    pids+=($!)
}

# Waits up to 10 s for each URL to answer 2xx (certificates unchecked);
# shows the gateway's and nginx's logs and exits when one does not.
wait_up() {
    local url
    for url in "$@"; do
        for _ in $(seq 1 100); do
            if curl -fsk "$url" >/dev/null 2>&1; then break; fi
            sleep 0.1
        done
        curl -fsk "$url" >/dev/null || {
            echo "not up: $url"
            cat "$work/gateway.log" "$work"/nginx*/error.log 2>/dev/null
            exit 1
        }
    done
}
