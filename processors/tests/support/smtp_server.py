"""A real SMTP server (aiosmtpd) for the SMTP provider's tests.

Listens on 127.0.0.1 on a port the OS picks and prints that port on the
first line of stdout. Every accepted message is written to OUT_DIR as
<n>.json ({"mail_from", "rcpt_tos", "data", "tls", "auth"}: "tls" is the
TLS version the message came over, or null for plaintext; "auth" the login
it authenticated as, or null). Exits when stdin closes, so it never outlives
the test that started it.

usage: smtp_server.py OUT_DIR [--reject ADDR]... [--tempfail ADDR]...
                              [--auth USER:PASSWORD]
                              [--tls starttls|implicit]

--tls uses tls/server.pem (for 127.0.0.1 and localhost, signed by
tls/ca.pem) next to this script. starttls: plain connect, STARTTLS
required before anything but EHLO/NOOP/QUIT, and AUTH only over TLS.
implicit: TLS from the first byte (SMTPS, port 465 style).
"""

import argparse
import asyncio
import json
import logging
import os
import socket
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, TLSSetupException


class Handler:
    def __init__(self, out_dir, reject, tempfail):
        self.out_dir = out_dir
        self.reject = {a.lower() for a in reject}
        self.tempfail = {a.lower() for a in tempfail}
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return "550 5.1.1 <%s>: Recipient address rejected: mailbox unavailable" % address
        if address.lower() in self.tempfail:
            return "451 4.3.0 <%s>: Temporary lookup failure, try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        n = self.count
        # The SSL transport after STARTTLS, or the implicit-TLS one.
        tls = server.transport.get_extra_info("ssl_object")
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", errors="replace"),
            "tls": tls.version() if tls else None,
            "auth": session.auth_data if session.authenticated else None,
        }
        tmp = os.path.join(self.out_dir, "%d.tmp" % n)
        with open(tmp, "w") as f:
            json.dump(record, f)
        # Rename so a reader never sees a half-written file.
        os.rename(tmp, os.path.join(self.out_dir, "%d.json" % n))
        return "250 2.0.0 Ok: queued as TEST%04d" % n


class Authenticator:
    def __init__(self, user, password):
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user
            and auth_data.password == self.password
        )
        # handled=False: aiosmtpd itself answers "535 5.7.8 Authentication
        # credentials invalid" (handled=True would leave the client waiting).
        return AuthResult(success=ok, handled=False, auth_data=self.user.decode())


def quiet_tls_refusals(record):
    """Drops aiosmtpd's traceback for a client that refused our certificate
    during STARTTLS: tests that expect exactly that stay quiet."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, TLSSetupException)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("--reject", action="append", default=[])
    p.add_argument("--tempfail", action="append", default=[])
    p.add_argument("--auth")
    p.add_argument("--tls", choices=["starttls", "implicit"])
    args = p.parse_args()

    handler = Handler(args.out_dir, args.reject, args.tempfail)
    # aiosmtpd warns that AUTH without TLS is unsafe; the tests speak plain
    # SMTP on loopback on purpose, so keep the test output clean.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    log = logging.getLogger("mail.log")
    log.setLevel(logging.ERROR)
    log.addFilter(quiet_tls_refusals)
    kwargs = {"hostname": "smtp.test"}
    ssl_context = None
    if args.tls:
        tls_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tls")
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.load_cert_chain(
            os.path.join(tls_dir, "server.pem"), os.path.join(tls_dir, "server.key")
        )
    if args.tls == "starttls":
        kwargs.update(tls_context=ssl_context, require_starttls=True)
    if args.auth:
        user, _, password = args.auth.partition(":")
        kwargs.update(
            authenticator=Authenticator(user, password),
            auth_required=True,
            # Over STARTTLS, AUTH only once TLS is up, as a real relay does.
            # Otherwise off: plain SMTP on loopback is on purpose, and with
            # implicit TLS aiosmtpd does not see the TLS (it only tracks its
            # own STARTTLS) and would refuse AUTH.
            auth_require_tls=args.tls == "starttls",
        )

    loop = asyncio.new_event_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTP(handler, **kwargs),
            sock=sock,
            ssl=ssl_context if args.tls == "implicit" else None,
        )
    )
    print(sock.getsockname()[1], flush=True)

    def stdin_closed():
        if not sys.stdin.buffer.read1(4096):
            loop.stop()

    loop.add_reader(sys.stdin.fileno(), stdin_closed)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
