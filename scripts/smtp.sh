#!/usr/bin/env bash
# A mail server for the `it-smtp` tests: aiosmtpd (PyPI), installed into a
# virtual environment of its own when missing; the tests start
# scripts/smtp-sink.py with its Python.
#
#   scripts/smtp.sh install   install aiosmtpd when missing
#   scripts/smtp.sh python    print the path of the environment's Python
set -euo pipefail

version="1.4.6"
venv="${GATEHOUSE_TOOLS:-$HOME/.cache/gatehouse}/smtp-venv"

install() {
    if "$venv/bin/python" -c "import aiosmtpd, sys; sys.exit(aiosmtpd.__version__ != '$version')" 2>/dev/null; then
        return
    fi
    echo "installing aiosmtpd $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "aiosmtpd==$version"
}

case "${1:-}" in
    install) install ;;
    python) echo "$venv/bin/python" ;;
    *) echo "usage: $0 install|python" >&2; exit 2 ;;
esac
