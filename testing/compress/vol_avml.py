#!/usr/bin/env python3
"""Reads an AVML v2 image with stock Volatility 3's AVMLLayer and compares
every byte it returns with a plain LiME image of the same memory.

    vol_avml.py IMAGE.avml REFERENCE.lime

Run it under a time limit (`timeout 300 ...`): Volatility 3's AVML reader
loops forever on a block whose snappy stream is longer than the block, which
is exactly what this check exists to catch. Blocks left out of the AVML
image (all zero) must be all zero in the reference. Exit 0 when equal.
"""
import os
import struct
import sys

from volatility3.framework import contexts
from volatility3.framework.layers import avml, physical


def lime_records(path):
    """(start, end_exclusive, file_offset) of each LiME record, parsed here."""
    out = []
    with open(path, "rb") as f:
        data_len = f.seek(0, 2)
        off = 0
        while off < data_len:
            f.seek(off)
            magic, version, start, last, _ = struct.unpack("<IIQQQ", f.read(32))
            assert magic == 0x4C694D45 and version == 1, f"not LiME at {off:#x}"
            out.append((start, last + 1, off + 32))
            off += 32 + last + 1 - start
    return out


def main():
    image, reference = sys.argv[1], sys.argv[2]
    if not avml.HAS_SNAPPY:
        sys.exit("vol_avml: Volatility 3 finds no libsnappy (install libsnappy1v5)")
    ctx = contexts.Context()
    ctx.config["file.location"] = "file://" + os.path.abspath(image)
    ctx.add_layer(physical.FileLayer(ctx, "file", "file"))
    # The stacker Volatility's automagic uses: it must recognise the file.
    layer = avml.AVMLStacker.stack(ctx, "file")
    if layer is None:
        sys.exit("vol_avml: Volatility 3's AVMLStacker does not stack on this file")
    ctx.add_layer(layer)
    # Segments as Volatility 3 mapped them: (address, length), merged.
    mapped = []
    for addr, _, length, _ in sorted((s[0], s[1], s[2], s[3]) for s in layer._segments):
        if mapped and mapped[-1][1] == addr:
            mapped[-1][1] = addr + length
        else:
            mapped.append([addr, addr + length])
    records = lime_records(reference)
    ref = open(reference, "rb")
    checked = 0
    for start, end, off in records:
        at = start
        while at < end:
            n = min(end - at, 4 << 20)
            ref.seek(off + at - start)
            want = ref.read(n)
            inside = [m for m in mapped if m[0] <= at < m[1]]
            if inside:
                n = min(n, inside[0][1] - at)
                got = layer.read(at, n)
                if got != want[:n]:
                    sys.exit(f"vol_avml: bytes differ in [{at:#x}, {at + n:#x})")
            else:
                nxt = min([m[0] for m in mapped if m[0] > at] + [end])
                n = min(n, nxt - at)
                if want[:n].count(0) != n:
                    sys.exit(f"vol_avml: [{at:#x}, {at + n:#x}) left out of the AVML image but not zero")
            checked += n
            at += n
    print(f"vol_avml: Volatility 3 AVMLLayer read {len(mapped)} mapped range(s), {checked} bytes equal the reference")


if __name__ == "__main__":
    main()
