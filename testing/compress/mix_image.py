#!/usr/bin/env python3
"""A memory-like LiME image for compression benchmarks, from this machine's
own files: runs of 1-64 pages, drawn (seeded: the same machine gives the same
image) from zero pages (40%), shared libraries and programs as the page cache
and process memory hold them (30%), text: Rust sources and documentation
(15%), already-compressed data: .crate (gzip) and .gz files, as zswap or
compressed files in the page cache hold it (10%), and pseudo-random bytes,
as encrypted memory is (5%).

    python3 testing/compress/mix_image.py OUT.lime [MiB]   # default 1024

It is not a memory dump (no kernel structures, no page tables): use a real
guest image where one is at hand. One LiME range from 1 MiB up.
"""
import os
import random
import struct
import sys
from pathlib import Path

PAGE = 4096
HOME = Path.home()


def pool(patterns, cap, want):
    """Up to `cap` bytes of the files under `patterns` that `want` accepts,
    in sorted path order."""
    out, size = [], 0
    for root, glob in patterns:
        for p in sorted(Path(root).glob(glob)):
            if size >= cap:
                break
            try:
                if not p.is_file() or p.is_symlink() or not want(p):
                    continue
                data = p.read_bytes()[: cap - size]
            except OSError:
                continue
            out.append(data)
            size += len(data)
    blob = b"".join(out)
    if len(blob) < 1 << 20:
        raise SystemExit(f"too little data under {patterns}")
    return blob


def main():
    out = sys.argv[1]
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    rng = random.Random(20261203)
    binaries = pool([("/usr/lib/x86_64-linux-gnu", "**/*.so*"), ("/usr/bin", "*")],
                    384 << 20, lambda p: True)
    text = pool([(HOME / ".cargo/registry/src", "*/*/src/**/*.rs"), ("/usr/share/doc", "**/*")],
                192 << 20, lambda p: not p.name.endswith(".gz"))
    packed = pool([(HOME / ".cargo/registry/cache", "*/*.crate"), ("/usr/share/doc", "**/*.gz"),
                   ("/usr/share/man", "**/*.gz")], 96 << 20, lambda p: True)
    kinds = [("zero", 40), ("binary", 30), ("text", 15), ("packed", 10), ("random", 5)]
    names = [k for k, _ in kinds]
    weights = [w for _, w in kinds]
    cursor = {"binary": 0, "text": 0, "packed": 0}
    blobs = {"binary": binaries, "text": text, "packed": packed}
    total = mib << 20
    start = 1 << 20
    with open(out, "wb") as f:
        f.write(struct.pack("<IIQQQ", 0x4C694D45, 1, start, start + total - 1, 0))
        left = total
        while left:
            kind = rng.choices(names, weights)[0]
            n = min(rng.randint(1, 64) * PAGE, left)
            if kind == "zero":
                f.write(bytes(n))
            elif kind == "random":
                f.write(rng.randbytes(n))
            else:
                blob, at = blobs[kind], cursor[kind]
                piece = (blob[at:at + n] + blob[: max(0, at + n - len(blob))])
                cursor[kind] = (at + n) % len(blob)
                f.write(piece)
            left -= n
    print(f"{out}: {mib} MiB; pools: binaries {len(binaries) >> 20} MiB, "
          f"text {len(text) >> 20} MiB, compressed {len(packed) >> 20} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
