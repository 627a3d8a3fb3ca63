"""Schemathesis hooks for scripts/fuzz-api.sh: signed-in operations get the
token of a user made for the purpose, and a fresh one every second, so that
a case that deletes its user, changes its password or logs out leaves the
cases after it with a user that works. Each user is made an admin with
`gatehouse admin grant`, so the admin APIs are fuzzed past their
permission checks, whatever the cases before did to roles and bindings."""

import json
import os
import subprocess
import urllib.request
import uuid

import schemathesis

BASE = os.environ["FUZZ_GATEWAY"]
PASSWORD = "fuzzing passphrase of the run"


def _post(path, body):
    request = urllib.request.Request(
        BASE + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read() or b"null")


@schemathesis.auth(refresh_interval=1)
class FreshUser:
    def get(self, case, context):
        email = f"fuzz-{uuid.uuid4().hex}@example.org"
        _post("/v1/users", {"email": email, "password": PASSWORD, "display_name": "Fuzz"})
        subprocess.run(
            [os.environ["FUZZ_BINARY"], "admin", "grant", "--email", email, "--role", "admin"],
            # Only its data directory: every GATEHOUSE_ variable is config.
            env={"PATH": os.environ.get("PATH", ""), "GATEHOUSE_DATA_DIR": os.environ["FUZZ_DATA_DIR"]},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return _post("/v1/auth/login", {"email": email, "password": PASSWORD})["access_token"]

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
