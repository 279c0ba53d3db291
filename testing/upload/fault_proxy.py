#!/usr/bin/env python3
"""HTTP pass-through proxy on 127.0.0.1 that injects faults, for the upload
fault tests (crates/pmem/tests/s3.rs).

  fault_proxy.py UPSTREAM_PORT MODE

MODE:
  fail-part=N   answer every PUT of part N with HTTP 500 (others pass)
  stall-part=N  accept part N's request, then never answer (slow server)
  fail-match=S  answer every PUT whose path contains S with HTTP 500

Prints "PORT <n>" once listening, and one "HIT <method> <path?query>" line
per request; exits after 300 s.
"""
import http.client
import http.server
import re
import sys
import threading
import time

UPSTREAM = int(sys.argv[1])
MODE, _, ARG = sys.argv[2].partition("=")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        print("HIT", self.command, self.path, flush=True)
        if MODE == "fail-match" and ARG in self.path and self.command == "PUT":
            msg = b"<Error><Code>InternalError</Code></Error>"
            self.send_response(500)
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        part = re.search(r"partNumber=(\d+)", self.path)
        if part and part.group(1) == ARG and self.command == "PUT":
            if MODE == "fail-part":
                msg = b"<Error><Code>InternalError</Code></Error>"
                self.send_response(500)
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)
                return
            if MODE == "stall-part":
                time.sleep(280)
                return
        conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=60)
        headers = {k: v for k, v in self.headers.items()}
        conn.request(self.command, self.path, body=body, headers=headers)
        reply = conn.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for k, v in reply.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print("PORT", server.server_address[1], flush=True)
threading.Timer(300, server.shutdown).start()
server.serve_forever()
