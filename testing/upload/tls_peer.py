#!/usr/bin/env python3
"""Independent peer for pmem's tls:// stream, written with Python's ssl
module from the wire format in crates/pmem-upload/src/tls.rs (not from pmem's
code), for the tests in crates/pmem/tests/tls.rs. BLAKE3 trailers are checked
with Debian's b3sum, SHA-256 ones with hashlib.

  tls_peer.py receive CERT KEY OUT      receive one acquisition (version 2, or a
                                        version-1 sender): the image (OUT), then
                                        the symbols (OUT.symbols) and the manifest
                                        (OUT.json), until an object says nothing follows
  tls_peer.py receive-v1 CERT KEY OUT   a version-1 receiver (as pmem before the hash
                                        byte): refuses a version-2 header as "not a
                                        pmem stream" and closes; exits after one refusal
  tls_peer.py send-v1 HOST PORT FILE    a version-1 sender: FILE as the only object
                                        (an image saying nothing follows), SHA-256
                                        trailer, no ready token; checks the ack
  tls_peer.py cut-receiver CERT KEY N   read N payload bytes, then drop the connection
  tls_peer.py cut-sender HOST PORT N    send a header and N bytes, then close without trailer

Servers print "PORT <n>" on stdout once listening on 127.0.0.1 (a free
port), and exit after one acquisition or after 120 s.
"""
import hashlib
import os
import socket
import ssl
import struct
import subprocess
import sys

MAGIC = b"PMEMTLS2"
MAGIC_V1 = b"PMEMTLS1"
READY = b"PMEMRDY2"
SUFFIX = {b"I": "", b"S": ".symbols", b"M": ".json"}
HASHES = {b"b": "blake3", b"s": "sha256"}


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


def file_hash(algorithm, path):
    """The hash of the file at path: b3sum for BLAKE3, hashlib for SHA-256."""
    if algorithm == "blake3":
        out = subprocess.run(["b3sum", "--no-names", path], check=True,
                             capture_output=True, text=True).stdout
        return bytes.fromhex(out.strip())
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def receive_one(conn, out):
    header = read_exact(conn, 10)
    if header[:8] == MAGIC:
        byte = read_exact(conn, 1)
        if byte not in HASHES:
            raise SystemExit(f"unknown hash algorithm {byte!r}")
        algorithm, version = HASHES[byte], 2
        conn.sendall(READY)
    elif header[:8] == MAGIC_V1:
        algorithm, version = "sha256", 1
    else:
        raise SystemExit(f"not a pmem stream: {header!r}")
    kind, follows = header[8:9], header[9] & 1
    if kind not in SUFFIX:
        raise SystemExit(f"unknown object kind {kind!r}")
    path = out + SUFFIX[kind]
    total = 0
    with open(path + ".partial", "wb") as f:
        while True:
            (length,) = struct.unpack(">I", read_exact(conn, 4))
            if length == 0:
                break
            data = read_exact(conn, length)
            f.write(data)
            total += len(data)
    declared, digest = struct.unpack(">Q", read_exact(conn, 8))[0], read_exact(conn, 32)
    if declared != total or digest != file_hash(algorithm, path + ".partial"):
        raise SystemExit(f"trailer mismatch: {declared} vs {total} ({algorithm})")
    # close_notify from the sender: recv returns b"" (a ragged EOF raises).
    if conn.recv(1) != b"":
        raise SystemExit("data after the trailer")
    os.replace(path + ".partial", path)
    conn.sendall(b"PMEMACK1" + digest)
    print("RECEIVED", kind.decode(), total, algorithm, digest.hex(), f"v{version}", flush=True)
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


def receive_v1(cert, key):
    ctx, sock = listen(cert, key)
    raw, _ = sock.accept()
    conn = ctx.wrap_socket(raw, server_side=True)
    header = read_exact(conn, 10)
    if header[:8] != MAGIC_V1:
        # What pmem's version-1 receiver does: "not a pmem stream", and
        # the connection is dropped.
        print("REJECTED not a pmem stream", header[:8].decode(errors="replace"), flush=True)
        conn.close()
        return
    raise SystemExit("a version-1 header: this mode only tests refusals")


def send_v1(host, port, path):
    # Memory BIOs: the close_notify goes out while the ack is still to be
    # read, as pmem's version-1 sender did (SSLSocket.unwrap would wait).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with open(path, "rb") as f:
        data = f.read()
    sock = socket.create_connection((host, int(port)), timeout=30)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=host)

    def flush():
        out = outgoing.read()
        if out:
            sock.sendall(out)

    def pump():
        chunk = sock.recv(1 << 16)
        if chunk:
            incoming.write(chunk)
        else:
            incoming.write_eof()

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            pump()
    flush()

    def send(payload):
        tls.write(payload)
        flush()

    send(MAGIC_V1 + b"I\x00")
    for at in range(0, len(data), 1 << 20):
        frame = data[at:at + (1 << 20)]
        send(struct.pack(">I", len(frame)) + frame)
    digest = hashlib.sha256(data).digest()
    send(struct.pack(">IQ", 0, len(data)) + digest)
    try:
        tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    flush()
    sock.shutdown(socket.SHUT_WR)
    ack = b""
    while len(ack) < 40:
        try:
            ack += tls.read(40 - len(ack))
        except ssl.SSLWantReadError:
            pump()
        except ssl.SSLZeroReturnError:
            break
    sock.close()
    if ack != b"PMEMACK1" + digest:
        raise SystemExit(f"no matching ack: {ack!r}")
    print("SENT", len(data), digest.hex(), flush=True)


def cut_receiver(cert, key, n):
    ctx, sock = listen(cert, key)
    raw, _ = sock.accept()
    conn = ctx.wrap_socket(raw, server_side=True)
    if read_exact(conn, 11)[:8] != MAGIC:
        raise SystemExit("not a version-2 header")
    conn.sendall(READY)
    read_exact(conn, n)
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
        conn.sendall(MAGIC + b"I\x01b")
        if read_exact(conn, 8) != READY:
            raise SystemExit("no ready token")
        conn.sendall(struct.pack(">I", n) + b"\x5a" * n)
        # No end frame, no trailer: as if the sender were killed.
    print("SENT", flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "receive":
        receive(*args)
    elif mode == "receive-v1":
        receive_v1(args[0], args[1])
    elif mode == "send-v1":
        send_v1(args[0], args[1], args[2])
    elif mode == "cut-receiver":
        cut_receiver(args[0], args[1], int(args[2]))
    elif mode == "cut-sender":
        cut_sender(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
