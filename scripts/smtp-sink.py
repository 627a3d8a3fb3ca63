"""A mail server for the `it-smtp` tests: aiosmtpd on one loopback port,
keeping each message it accepts as a JSON file in a directory: its
headers and body as a mail reader shows them, and how it arrived (over
TLS or not, signed in as whom).

    smtp-sink.py --port P --dir D [--security starttls|tls|none]
                 [--cert PEM --key PEM] [--user U --password W]

With --user, a client must sign in (and, with STARTTLS, upgrade first).
A recipient whose address starts with "refused" is refused for good (550).
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import ssl

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, directory, implicit_tls):
        self.directory = directory
        self.implicit_tls = implicit_tls
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().startswith("refused"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        # Read as a mail reader would: headers decoded, the body's transfer
        # encoding (quoted-printable, base64) undone.
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        record = {
            "from": str(message["From"]),
            "to": str(message["To"]),
            "subject": str(message["Subject"]),
            "content_type": message.get_content_type(),
            "body": message.get_content(),
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            # Under TLS from the first byte nothing but TLS gets this far.
            "tls": self.implicit_tls or session.ssl is not None,
            "login": session.auth_data.login.decode() if session.authenticated else None,
        }
        name = os.path.join(self.directory, f"{self.count:06}.json")
        with open(name + ".part", "w") as f:
            json.dump(record, f)
        os.rename(name + ".part", name)
        return "250 Message accepted"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--security", default="starttls", choices=["starttls", "tls", "none"])
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()

    context = None
    if args.security != "none":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == args.user
            and auth_data.password.decode() == args.password
        )
        return AuthResult(success=ok, auth_data=auth_data)

    smtp = {}
    if args.user:
        smtp.update(
            authenticator=authenticator,
            auth_required=True,
            # Under TLS from the first byte aiosmtpd does not know the
            # connection is secure, and would hide AUTH.
            auth_require_tls=args.security == "starttls",
        )
    if args.security == "starttls":
        smtp.update(tls_context=context, require_starttls=True)
    controller = Controller(
        Sink(args.dir, args.security == "tls"),
        hostname="127.0.0.1",
        port=args.port,
        ssl_context=context if args.security == "tls" else None,
        server_hostname="localhost",
        **smtp,
    )
    controller.start()
    print(f"smtp-sink listening on 127.0.0.1:{args.port}", flush=True)
    try:
        asyncio.run(asyncio.Event().wait())
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
