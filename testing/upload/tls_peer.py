#!/usr/bin/env python3
"""Independent peer for pmem's tls:// stream, written with Python's ssl
module from the wire format in crates/pmem-upload/src/tls.rs (not from pmem's
code), for the tests in crates/pmem/tests/tls.rs.

  tls_peer.py receive CERT KEY OUT      receive one acquisition: the image (OUT), then
                                        the symbols (OUT.symbols) and the manifest
                                        (OUT.json), until an object says nothing follows
  tls_peer.py cut-receiver CERT KEY N   read N payload bytes, then drop the connection
  tls_peer.py cut-sender HOST PORT N    send a header and N bytes, then close without trailer

Servers print "PORT <n>" on stdout once listening on 127.0.0.1 (a free
port), and exit after one acquisition or after 120 s.
"""
import hashlib
import socket
import ssl
import struct
import sys

MAGIC = b"PMEMTLS1"
SUFFIX = {b"I": "", b"S": ".symbols", b"M": ".json"}


def listen(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.settimeout(120)
    print("PORT", sock.getsockname()[1], flush=True)
    return ctx, sock


def read_exact(conn, n):
    out = bytearray()
    while len(out) < n:
        chunk = conn.recv(min(n - len(out), 1 << 20))
        if not chunk:
            raise EOFError(f"stream ended after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def receive_one(conn, out):
    header = read_exact(conn, 10)
    assert header[:8] == MAGIC, header
    kind, follows = header[8:9], header[9] & 1
    if kind not in SUFFIX:
        raise SystemExit(f"unknown object kind {kind!r}")
    path = out + SUFFIX[kind]
    digest, total = hashlib.sha256(), 0
    with open(path + ".partial", "wb") as f:
        while True:
            (length,) = struct.unpack(">I", read_exact(conn, 4))
            if length == 0:
                break
            data = read_exact(conn, length)
            f.write(data)
            digest.update(data)
            total += len(data)
    declared, sha = struct.unpack(">Q", read_exact(conn, 8))[0], read_exact(conn, 32)
    if declared != total or sha != digest.digest():
        raise SystemExit(f"trailer mismatch: {declared} vs {total}")
    # close_notify from the sender: recv returns b"" (a ragged EOF raises).
    if conn.recv(1) != b"":
        raise SystemExit("data after the trailer")
    import os
    os.replace(path + ".partial", path)
    conn.sendall(b"PMEMACK1" + sha)
    print("RECEIVED", kind.decode(), total, sha.hex(), flush=True)
    return kind, follows


def receive(cert, key, out):
    ctx, sock = listen(cert, key)
    while True:
        raw, _ = sock.accept()
        with ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False) as conn:
            kind, follows = receive_one(conn, out)
            try:
                conn.unwrap()
            except (OSError, ssl.SSLError):
                pass
        if not follows:
            return


def cut_receiver(cert, key, n):
    ctx, sock = listen(cert, key)
    raw, _ = sock.accept()
    conn = ctx.wrap_socket(raw, server_side=True)
    read_exact(conn, 10 + n)
    # An abrupt close: no close_notify, pending data discarded (RST).
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    print("CUT", flush=True)


def cut_sender(host, port, n):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        conn = ctx.wrap_socket(raw, server_hostname=host)
        conn.sendall(MAGIC + b"I\x01")
        conn.sendall(struct.pack(">I", n) + b"\x5a" * n)
        # No end frame, no trailer: as if the sender were killed.
    print("SENT", flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "receive":
        receive(*args)
    elif mode == "cut-receiver":
        cut_receiver(args[0], args[1], int(args[2]))
    elif mode == "cut-sender":
        cut_sender(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
