"""A push service stand-in (RFC 8030) for the web push provider's tests.

It plays the push service and the browser behind it: it makes a subscriber
key pair and auth secret, and for every POST it checks the VAPID
Authorization (RFC 8292: an ES256 JWT whose signature verifies with the
`k` public key, `k` equal to --vapid-public, `aud` this server's origin,
`exp` within 24 hours, `sub` a mailto: or https: contact) and decrypts the
body with the subscriber's private key (RFC 8291 aes128gcm, with Python's
`http_ece`, written independently of the sender). A request that fails
either check is recorded with its error and answered 400, so the test sees
a rejection and fails.

Listens on 127.0.0.1 on a port the OS picks and prints one JSON line:
{"port", "p256dh", "auth"} (keys base64url). Every push is written to
OUT_DIR as <n>.json: {"path", "headers" (lower-case names), "plaintext" or
"error", "claims"}. Exits when stdin closes.

The endpoint's path says how to answer: /push/<anything> is 201 Created,
/status/<code>/<anything> answers <code> (with Retry-After: 7 on 429 and
503) after the same checks.

usage: webpush_server.py OUT_DIR --vapid-public KEY
"""

import argparse
import base64
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def check_vapid(header, expected_key, origin):
    """The JWT's claims, or an exception saying what is wrong."""
    if not header or not header.startswith("vapid "):
        raise ValueError("Authorization is not `vapid t=..., k=...`: %r" % header)
    params = {}
    for part in header[len("vapid "):].split(","):
        name, _, value = part.strip().partition("=")
        params[name] = value
    token, key = params.get("t"), params.get("k")
    if not token or not key:
        raise ValueError("Authorization lacks t= or k=: %r" % header)
    if key != expected_key:
        raise ValueError("k=%s is not the configured VAPID public key %s" % (key, expected_key))
    header_b64, claims_b64, sig_b64 = token.split(".")
    jose = json.loads(b64d(header_b64))
    if jose.get("alg") != "ES256":
        raise ValueError("JWT alg is %r, not ES256" % jose.get("alg"))
    sig = b64d(sig_b64)
    if len(sig) != 64:
        raise ValueError("ES256 signature is %d bytes, not 64 (r||s)" % len(sig))
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(key))
    try:
        public.verify(der, ("%s.%s" % (header_b64, claims_b64)).encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ValueError("the JWT signature does not verify with k")
    claims = json.loads(b64d(claims_b64))
    if claims.get("aud") != origin:
        raise ValueError("aud is %r, not this push service's origin %r" % (claims.get("aud"), origin))
    now = time.time()
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= now or exp > now + 24 * 3600:
        raise ValueError("exp %r is not within the next 24 hours" % exp)
    sub = claims.get("sub", "")
    if not (sub.startswith("mailto:") or sub.startswith("https:")):
        raise ValueError("sub %r is not a mailto: or https: contact" % sub)
    return claims


class Service:
    def __init__(self, out_dir, vapid_public):
        self.out_dir = out_dir
        self.vapid_public = vapid_public
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        self.p256dh = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.count = 0
        self.lock = threading.Lock()
        self.origin = None

    def record(self, entry):
        with self.lock:
            self.count += 1
            n = self.count
        tmp = os.path.join(self.out_dir, "%d.tmp" % n)
        with open(tmp, "w") as f:
            json.dump(entry, f)
        # Rename so a reader never sees a half-written file.
        os.rename(tmp, os.path.join(self.out_dir, "%d.json" % n))


def handler(service):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            entry = {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
            status = 201
            try:
                entry["claims"] = check_vapid(
                    self.headers.get("Authorization"), service.vapid_public, service.origin
                )
                if self.headers.get("Content-Encoding") != "aes128gcm":
                    raise ValueError("Content-Encoding is %r" % self.headers.get("Content-Encoding"))
                if "TTL" not in self.headers:
                    raise ValueError("no TTL header (RFC 8030 requires it)")
                plaintext = http_ece.decrypt(
                    body,
                    private_key=service.private_key,
                    auth_secret=service.auth,
                    version="aes128gcm",
                )
                entry["plaintext"] = plaintext.decode("utf-8")
                parts = self.path.strip("/").split("/")
                if parts[0] == "status":
                    status = int(parts[1])
            except Exception as e:  # anything wrong is the test's failure
                entry["error"] = "%s: %s" % (type(e).__name__, e)
                status = 400
            service.record(entry)
            self.send_response(status)
            if status in (429, 503):
                self.send_header("Retry-After", "7")
            if status == 201:
                self.send_header("Location", "/message/%d" % service.count)
            reply = entry.get("error", "").encode()
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--vapid-public", required=True)
    args = parser.parse_args()
    service = Service(args.out_dir, args.vapid_public)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(service))
    port = server.server_address[1]
    service.origin = "http://127.0.0.1:%d" % port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": port, "p256dh": b64e(service.p256dh), "auth": b64e(service.auth)}), flush=True)
    # Exit with the test: its end closes our stdin.
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
