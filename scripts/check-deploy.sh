#!/usr/bin/env bash
# Checks the systemd unit under deploy/systemd with systemd-analyze, once
# for each service, against the binaries `just build-all` built (the unit
# names /usr/local/bin, where they are installed on a machine). The example
# configs under deploy/config are checked by the integration tests.
set -euo pipefail

if ! command -v systemd-analyze >/dev/null; then
    echo "check-deploy: systemd-analyze is missing (Debian: apt-get install systemd)" >&2
    exit 1
fi
target="${CARGO_TARGET_DIR:-target}"
bin="$(cd "$target/debug" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sed "s|/usr/local/bin/|$bin/|" deploy/systemd/gatehouse@.service >"$work/gatehouse@.service"
cp -r "deploy/systemd/gatehouse@gateway.service.d" "$work/"
for service in gateway auth identity authz audit; do
    # An unknown or misspelt directive is only a warning to systemd: any
    # word from it fails the check.
    said="$(SYSTEMD_UNIT_PATH="$work:" systemd-analyze verify --man=no "gatehouse@$service.service" 2>&1)" || true
    if [ -n "$said" ]; then
        echo "check-deploy: gatehouse@$service.service: $said" >&2
        exit 1
    fi
done
echo "check-deploy: gatehouse@.service holds for every service"
