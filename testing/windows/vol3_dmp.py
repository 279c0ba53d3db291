"""Proves that Volatility 3 reads pmem's Windows crash dumps byte-exact.

    python3 vol3_dmp.py PMEM_BINARY WORKDIR [MIB]

Builds synthetic memory as a LiME file (written here, independently of pmem):
random pages with zero pages mixed in, spread over many runs. Then, for both
dump kinds:
  * full (DumpType 1): 40 runs, fits the header's 42-run table;
  * bitmap (DumpType 5): 300 runs, more than the table holds;
  * the same two kinds in the 32-bit layout (WindowsCrashDump32Layer);
converts the LiME file with `pmem convert --format dmp --cr3 ...`, opens the
dump with Volatility 3's WindowsCrashDump64Layer through its Python API
(stacked on a FileLayer, as `vol -f` does), and compares every byte of every
run read through that layer with the LiME source. Also checks the header
fields Volatility exposes (DTB, dump type) and that addresses outside the runs
are not mapped. Needs volatility3 importable by this Python.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from volatility3.framework import contexts, exceptions
from volatility3.framework.layers import crash, physical

from synthetic import PAGE, lime_records, make_lime

CR3 = 0x1AA000
CHUNK = 4 << 20


def open_dump(dump, bits):
    ctx = contexts.Context()
    ctx.config["base.location"] = Path(dump).resolve().as_uri()
    ctx.layers.add_layer(physical.FileLayer(ctx, "base", "base"))
    ctx.config["dump.base_layer"] = "base"
    # The stacker tries the 32-bit layer, then the 64-bit one: the other
    # layer must refuse the header, so that `vol -f` stacks the right one.
    right, wrong = crash.WindowsCrashDump64Layer, crash.WindowsCrashDump32Layer
    if bits == 32:
        right, wrong = wrong, right
    try:
        wrong.check_header(ctx.layers["base"])
        raise AssertionError(f"{wrong.__name__} accepted a {bits}-bit dump")
    except crash.WindowsCrashDumpFormatException:
        pass
    layer = right(ctx, "dump", "dump")
    ctx.layers.add_layer(layer)
    return layer


def check(pmem, workdir, name, runs, mib, expect_type, bits=64):
    lime = workdir / f"{name}.lime"
    dump = workdir / f"{name}.dmp"
    for p in (lime, dump, Path(str(dump) + ".json")):
        if p.exists():
            p.unlink()
    ranges = make_lime(lime, runs, mib, seed=runs)
    subprocess.run(
        [pmem, "convert", "--quiet", "--format", "dmp", "--cr3", hex(CR3), "--build", "19041",
         "--processors", "4", "--arch", "x86_64" if bits == 64 else "i686", str(lime), str(dump)],
        check=True,
    )
    layer = open_dump(dump, bits)
    assert layer.dump_type == expect_type, f"{name}: dump type {layer.dump_type}, expected {expect_type}"
    assert layer.dtb == CR3, f"{name}: DTB {layer.dtb:#x}"
    header = layer.get_header()
    assert int(header.MinorVersion) == 19041 and int(header.NumberProcessors) == 4
    compared = 0
    with open(lime, "rb") as src:
        for start, end, offset in lime_records(lime):
            assert layer.is_valid(start, end - start), f"{name}: {start:#x}-{end:#x} not mapped"
            src.seek(offset)
            addr = start
            while addr < end:
                n = min(CHUNK, end - addr)
                expected = src.read(n)
                got = layer.read(addr, n)
                if got != expected:
                    bad = next(i for i in range(n) if got[i] != expected[i])
                    raise AssertionError(f"{name}: byte at {addr + bad:#x} differs")
                addr += n
                compared += n
            # The page before each run is a hole and must not be mapped.
            assert not layer.is_valid(start - PAGE, PAGE), f"{name}: hole at {start - PAGE:#x} mapped"
            try:
                layer.read(start - PAGE, PAGE)
                raise AssertionError(f"{name}: read of a hole succeeded")
            except exceptions.InvalidAddressException:
                pass
    result = {
        "dump": name,
        "layer": type(layer).__name__,
        "dump_type": layer.dump_type,
        "runs": len(ranges),
        "bytes_compared": compared,
        "dump_bytes": os.path.getsize(dump),
    }
    print(json.dumps(result), flush=True)
    return result


def main():
    pmem, workdir = sys.argv[1], Path(sys.argv[2])
    mib = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    workdir.mkdir(parents=True, exist_ok=True)
    check(pmem, workdir, "full", 40, mib, 1)
    check(pmem, workdir, "bitmap", 300, mib, 5)
    # The 32-bit layout: smaller, the same proof.
    check(pmem, workdir, "full32", 80, 32, 1, bits=32)
    check(pmem, workdir, "bitmap32", 120, 32, 5, bits=32)
    print("volatility3 read both dump types (64- and 32-bit) byte-exact")


if __name__ == "__main__":
    main()
