# gatehouse tasks. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Run the all-in-one platform on the embedded defaults.
run *ARGS:
    cargo run --release -- {{ARGS}}

# The default test suite: no server needed. Each test run fails when a suite
# in it ran no tests (scripts/tests-ran.sh).
test:
    scripts/tests-ran.sh cargo test

# The OpenID Connect provider end to end with real client libraries: a
# requests-oauth2client relying party and headless Chromium through
# chromedriver, against the debug `gatehouse` that build-all made
# (scripts/oidc-e2e.sh installs Chromium and the Python side when missing).
test-oidc:
    scripts/oidc-e2e.sh install
    scripts/oidc-e2e.sh run

# The same browser and relying-party tests against the five service binaries as
# processes of their own on PostgreSQL (DATABASE_URL's server).
test-oidc-separate:
    cargo build --features it-postgres,it-kafka,it-etcd,it-redis,it-smtp,it-cluster --bins
    scripts/oidc-e2e.sh install
    scripts/oidc-e2e.sh run-separate

# The integration suite against the local PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres).
test-postgres:
    scripts/tests-ran.sh cargo test --features it-postgres --test integration

# The integration suite on PostgreSQL with the suites of the Kafka bus, Redis,
# the etcd registry and identity's mail, against tansu brokers, etcd servers
# and aiosmtpd mail servers the tests start and the local Redis (REDIS_URL,
# default redis://127.0.0.1:6379) (scripts/kafka.sh, scripts/etcd.sh and
# scripts/smtp.sh install them when missing); then the
# acceptance specs against a replicated deployment on all of them (it-cluster),
# from the same build.
test-servers: tools
    scripts/tests-ran.sh cargo test --features it-postgres,it-kafka,it-etcd,it-redis,it-smtp,it-cluster --test integration --test acceptance

# The acceptance specs against a replicated deployment alone: two gateways,
# two auth, two identity, two authz and one audit on PostgreSQL, Redis,
# tansu and etcd, with features/cluster.feature killing and restarting them.
test-cluster: tools
    scripts/tests-ran.sh cargo test --features it-postgres,it-kafka,it-etcd,it-redis,it-smtp,it-cluster --test acceptance

# What building and testing every feature needs beyond cargo: tansu, etcd, protoc, aiosmtpd.
tools:
    scripts/kafka.sh install
    scripts/etcd.sh install
    scripts/smtp.sh install

# Each service binary built with only its own service feature (and both
# database backends, the Kafka bus, the etcd registry and Redis).
build-all: tools
    cargo build --no-default-features --features identity,sqlite,postgres,kafka,etcd,redis --bin gatehouse-identity
    cargo build --no-default-features --features auth,sqlite,postgres,kafka,etcd,redis --bin gatehouse-auth
    cargo build --no-default-features --features gateway,sqlite,postgres,kafka,etcd,redis --bin gatehouse-gateway
    cargo build --no-default-features --features authz,sqlite,postgres,kafka,etcd,redis --bin gatehouse-authz
    cargo build --no-default-features --features audit,sqlite,postgres,kafka,etcd,redis --bin gatehouse-audit
    cargo build --bin gatehouse

# Fuzzes the public API through the gateway: schemathesis, driven by the
# merged /openapi.json, every check and phase (scripts/fuzz-api.sh).
fuzz-api:
    cargo build --bin gatehouse
    scripts/fuzz-api.sh

fmt-check:
    cargo fmt --check

clippy: tools
    cargo clippy --all-targets --features it-postgres,it-kafka,it-etcd,it-redis,it-smtp,it-cluster,bench -- -D warnings

# The systemd unit under deploy/, checked by systemd-analyze for every
# service against the binaries build-all made.
check-deploy:
    scripts/check-deploy.sh

# Every benchmark scenario once, for about a second each, on a build without
# fat LTO: each must still start and print its figures (they are not judged).
bench-smoke:
    cargo build --profile bench-smoke --features bench --bins
    BENCH_PROFILE=bench-smoke timeout 900 scripts/bench.sh 1 all

# Everything CI checks (the PostgreSQL suite runs within test-servers).
ci: fmt-check clippy build-all check-deploy test test-oidc test-servers test-oidc-separate fuzz-api bench-smoke

# Benchmarks against a running release build; prints figure, baseline and ratio per
# scenario. `what`: footprint (idle memory, start), flood (memory and
# answers under floods of sign-ins and sign-ups), authz (checks over gRPC),
# core (platform scenarios), oidc (the OpenID Connect provider through the
# gateway), edge (gateway next to nginx), tls (the same over TLS), all.
bench seconds="15" what="all":
    cargo build --release --features bench --bins
    scripts/bench.sh {{seconds}} {{what}}
