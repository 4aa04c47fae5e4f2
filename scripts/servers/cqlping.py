#!/usr/bin/env python3
"""Minimal CQL native-protocol (v4) client used as a readiness probe.

Standard library only. Sends STARTUP, then one QUERY, and prints the first row
as name=value pairs. Exit status 0 on success, 1 on any failure (one line on
stderr saying why).

    cqlping.py [--host 127.0.0.1] [--port 19042] [--timeout 5]
               [--query "SELECT release_version FROM system.local"]
"""
import argparse
import socket
import struct
import sys

VERSION = 0x04          # request frame, protocol v4
OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE = 0x00, 0x01, 0x02, 0x03
OP_QUERY, OP_RESULT = 0x07, 0x08
CONSISTENCY_ONE = 0x0001
RESULT_ROWS = 0x0002


class CqlError(Exception):
    pass


def _string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def _long_string(s):
    b = s.encode()
    return struct.pack(">i", len(b)) + b


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise CqlError("connection closed by server")
        buf += chunk
    return buf


def request(sock, stream, opcode, body):
    sock.sendall(struct.pack(">BBhBi", VERSION, 0, stream, opcode, len(body)) + body)
    version, _flags, rstream, ropcode, length = struct.unpack(">BBhBi", _recv_exact(sock, 9))
    payload = _recv_exact(sock, length)
    if version & 0x7F != VERSION:
        raise CqlError("server answered with protocol version %d" % (version & 0x7F))
    if rstream != stream:
        raise CqlError("unexpected stream id %d" % rstream)
    if ropcode == OP_ERROR:
        code, = struct.unpack_from(">i", payload, 0)
        msg, _ = _read_string(payload, 4)
        raise CqlError("server error 0x%04x: %s" % (code, msg))
    return ropcode, payload


def _read_string(buf, pos):
    n, = struct.unpack_from(">H", buf, pos)
    pos += 2
    return buf[pos:pos + n].decode(errors="replace"), pos + n


def _read_option(buf, pos):
    type_id, = struct.unpack_from(">H", buf, pos)
    pos += 2
    if type_id == 0x0000:                 # custom: class name
        _, pos = _read_string(buf, pos)
    elif type_id in (0x0020, 0x0022):     # list, set
        _, pos = _read_option(buf, pos)
    elif type_id == 0x0021:               # map
        _, pos = _read_option(buf, pos)
        _, pos = _read_option(buf, pos)
    elif type_id == 0x0030:               # udt
        _, pos = _read_string(buf, pos)
        _, pos = _read_string(buf, pos)
        n, = struct.unpack_from(">H", buf, pos)
        pos += 2
        for _ in range(n):
            _, pos = _read_string(buf, pos)
            _, pos = _read_option(buf, pos)
    elif type_id == 0x0031:               # tuple
        n, = struct.unpack_from(">H", buf, pos)
        pos += 2
        for _ in range(n):
            _, pos = _read_option(buf, pos)
    return type_id, pos


def _render(type_id, raw):
    if raw is None:
        return "null"
    if type_id in (0x000A, 0x000D, 0x0001):  # text, varchar, ascii
        return raw.decode(errors="replace")
    if type_id == 0x0009 and len(raw) == 4:  # int
        return str(struct.unpack(">i", raw)[0])
    if type_id == 0x0002 and len(raw) == 8:  # bigint
        return str(struct.unpack(">q", raw)[0])
    return "0x" + raw.hex()


def parse_rows(payload):
    kind, = struct.unpack_from(">i", payload, 0)
    if kind != RESULT_ROWS:
        return None
    pos = 4
    flags, ncols = struct.unpack_from(">ii", payload, pos)
    pos += 8
    if flags & 0x0002:                    # has_more_pages: paging state
        n, = struct.unpack_from(">i", payload, pos)
        pos += 4 + max(n, 0)
    cols = []
    if not flags & 0x0004:                # metadata present
        if flags & 0x0001:                # global table spec
            _, pos = _read_string(payload, pos)
            _, pos = _read_string(payload, pos)
        for _ in range(ncols):
            if not flags & 0x0001:
                _, pos = _read_string(payload, pos)
                _, pos = _read_string(payload, pos)
            name, pos = _read_string(payload, pos)
            type_id, pos = _read_option(payload, pos)
            cols.append((name, type_id))
    else:
        cols = [("col%d" % i, None) for i in range(ncols)]
    nrows, = struct.unpack_from(">i", payload, pos)
    pos += 4
    rows = []
    for _ in range(nrows):
        row = []
        for name, type_id in cols:
            n, = struct.unpack_from(">i", payload, pos)
            pos += 4
            raw = None if n < 0 else payload[pos:pos + n]
            pos += max(n, 0)
            row.append((name, _render(type_id, raw)))
        rows.append(row)
    return rows


def ping(host, port, timeout, query):
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        opcode, _ = request(sock, 1, OP_STARTUP,
                            struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0"))
        if opcode == OP_AUTHENTICATE:
            raise CqlError("server requires authentication")
        if opcode != OP_READY:
            raise CqlError("unexpected answer to STARTUP: opcode 0x%02x" % opcode)
        body = _long_string(query) + struct.pack(">HB", CONSISTENCY_ONE, 0)
        opcode, payload = request(sock, 2, OP_QUERY, body)
        if opcode != OP_RESULT:
            raise CqlError("unexpected answer to QUERY: opcode 0x%02x" % opcode)
        return parse_rows(payload)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=19042)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--query", default="SELECT release_version FROM system.local")
    args = ap.parse_args()
    try:
        rows = ping(args.host, args.port, args.timeout, args.query)
    except (OSError, CqlError, struct.error) as e:
        print("cql %s:%d: %s" % (args.host, args.port, e), file=sys.stderr)
        return 1
    if rows is None:
        print("ok")
    elif not rows:
        print("ok (no rows)")
    else:
        print(" ".join("%s=%s" % kv for kv in rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
