# gatehouse tasks. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Run the all-in-one platform on the embedded defaults.
run *ARGS:
    cargo run --release -- {{ARGS}}

# The default test suite: no server needed.
test:
    cargo test

# The integration suite against the local PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres).
test-postgres:
    cargo test --features it-postgres --test integration

# Each service binary built with only its own service feature.
build-all:
    cargo build --no-default-features --features identity,sqlite,postgres --bin gatehouse-identity
    cargo build --no-default-features --features auth,sqlite,postgres --bin gatehouse-auth
    cargo build --no-default-features --features gateway,sqlite,postgres --bin gatehouse-gateway
    cargo build --no-default-features --features authz,sqlite,postgres --bin gatehouse-authz
    cargo build --no-default-features --features audit,sqlite,postgres --bin gatehouse-audit
    cargo build --bin gatehouse

# Fuzzes the public API through the gateway: schemathesis, driven by the
# merged /openapi.json, every check and phase (scripts/fuzz-api.sh).
fuzz-api:
    cargo build --bin gatehouse
    scripts/fuzz-api.sh

fmt-check:
    cargo fmt --check

clippy:
    cargo clippy --all-targets --features it-postgres,bench -- -D warnings

# Everything CI checks.
ci: fmt-check clippy build-all test test-postgres fuzz-api

# Benchmarks against a running release build; prints figure, baseline and ratio per
# scenario. `what`: footprint (idle memory, start), authz (checks over gRPC),
# core (platform scenarios), edge (gateway next to nginx), all.
bench seconds="15" what="all":
    cargo build --release --features bench --bins
    scripts/bench.sh {{seconds}} {{what}}
