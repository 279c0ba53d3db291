#!/usr/bin/env python3
"""Azurite helper for crates/pmem/tests/azure.rs, independent of pmem's
code: makes an account SAS for Azurite's well-known development account,
creates a container, reads a blob back.

  azure_sas.py sas                         print the SAS query string
  azure_sas.py mkcontainer PORT NAME
  azure_sas.py get PORT CONTAINER BLOB OUT (exit 3 if the blob is absent)
"""
import base64
import datetime
import hashlib
import hmac
import sys
import urllib.error
import urllib.parse
import urllib.request

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "2019-12-12"


def sas():
    expiry = (datetime.datetime.utcnow() + datetime.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields = [ACCOUNT, "rwdlac", "b", "sco", "", expiry, "", "http", VERSION, ""]
    sig = base64.b64encode(
        hmac.new(base64.b64decode(KEY), "\n".join(fields).encode(), hashlib.sha256).digest()
    ).decode()
    return urllib.parse.urlencode(
        {"sv": VERSION, "ss": "b", "srt": "sco", "sp": "rwdlac", "se": expiry, "spr": "http", "sig": sig}
    )


def url(port, path, extra=""):
    return f"http://127.0.0.1:{port}/{ACCOUNT}/{path}?{sas()}{extra}"


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "sas":
        print(sas())
    elif cmd == "mkcontainer":
        req = urllib.request.Request(url(sys.argv[2], sys.argv[3], "&restype=container"), method="PUT", data=b"")
        urllib.request.urlopen(req, timeout=30).read()
    elif cmd == "get":
        try:
            with urllib.request.urlopen(url(sys.argv[2], f"{sys.argv[3]}/{sys.argv[4]}"), timeout=120) as r, open(sys.argv[5], "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                sys.exit(3)
            raise
    else:
        sys.exit(f"unknown command {cmd}")
