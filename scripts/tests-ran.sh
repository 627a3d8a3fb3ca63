#!/usr/bin/env bash
# Runs a test command (`cargo test ...`) and fails, as the command does,
# when a test fails; and fails too when any suite it ran ran no tests (a
# test gate that compiles to nothing, a filter that matches nothing), which
# cargo and the cucumber runner would call a pass. Doc tests are left out:
# the crate has none.
#
# Usage: scripts/tests-ran.sh cargo test [ARGS...]
set -euo pipefail
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$@" 2>&1 | tee "$log"
python3 - "$log" <<'PY'
import re
import sys

suite = None
counted = []
for line in open(sys.argv[1], errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
    running = re.match(r"Running (?:unittests )?(\S+)", line)
    if running:
        suite = running.group(1)
        continue
    if line.startswith("Doc-tests"):
        suite = None
    if suite is None:
        continue
    tests = re.match(r"running (\d+) tests?$", line)
    # The acceptance runner may run more than one set (the cluster's drills).
    scenarios = re.match(r"(\d+) scenarios?\b", line)
    if tests or scenarios:
        counted.append((suite, int((tests or scenarios).group(1))))
empty = [suite for suite, n in counted if n == 0]
if not counted:
    sys.exit("tests-ran: no test suite ran")
if empty:
    sys.exit("tests-ran: these suites ran no tests: " + ", ".join(sorted(set(empty))))
print("tests-ran: " + ", ".join(f"{s.split('/')[-1]} {n}" for s, n in counted))
PY
