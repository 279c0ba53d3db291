"""pmem's AFF4 images read by pyaff4, the reference AFF4 implementation.

pyaff4 runs in its own venv (testing/aff4/pyaff4-setup.sh installs it; its
pinned dependencies need fixes on Python 3.11), so it is driven as a
subprocess: the harness writes the addresses it wants (marker pages, kernel
ranges), pyaff4 opens the volume's memory/physical aff4:Map by itself and
writes the bytes it reads there, and the harness compares them with what the
markers and QEMU's dump say.
"""

import struct
import subprocess
import tempfile
import threading
from pathlib import Path

import markers

HERE = Path(__file__).resolve().parent
SETUP = HERE.parent / "aff4" / "pyaff4-setup.sh"

# Runs in pyaff4's venv: argv = image, requests file (u64 address, u64
# length pairs), output file (the bytes, back to back). Opens the map
# through pyaff4's own resolver and zip reader.
READER = r'''
import struct, sys
import cramjam, snappy
# aff4-snappy 0.5.1 (pyaff4's pinned snappy binding) decompresses some
# chunks wrong when built by today's compilers; pyaff4's own logic (zip,
# Turtle, map, bevies, index) reads through the reference snappy codec.
snappy.decompress = lambda data: bytes(cramjam.snappy.decompress_raw(data))
from pyaff4 import data_store, lexicon, rdfvalue, zip, version
image, requests, output = sys.argv[1:4]
with data_store.MemoryDataStore() as resolver:
    urn = rdfvalue.URN.FromFileName(image)
    with zip.ZipFile.NewZipFile(resolver, version.aff4v10, urn) as volume:
        physical = "http://aff4.org/Schema#memory/physical"
        maps = [m for m in resolver.QueryPredicateObject(volume.urn, lexicon.AFF4_TYPE, lexicon.AFF4_MAP_TYPE)
                if physical in [str(c) for c in resolver.QuerySubjectPredicate(volume.urn, m, lexicon.AFF4_CATEGORY)]]
        if len(maps) != 1:
            sys.exit(f"pyaff4 found {len(maps)} memory/physical maps")
        with resolver.AFF4FactoryOpen(maps[0]) as stream, open(requests, "rb") as req, open(output, "wb") as out:
            data = req.read()
            for i in range(0, len(data), 16):
                address, length = struct.unpack_from("<QQ", data, i)
                stream.SeekRead(address)
                got = stream.Read(length)
                if len(got) != length:
                    sys.exit(f"pyaff4 read {len(got)} of {length} bytes at {address:#x}")
                out.write(got)
'''


_SETUP_LOCK = threading.Lock()


def pyaff4_python():
    with _SETUP_LOCK:  # cases run on threads; one install at a time
        result = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pyaff4 setup failed: {result.stderr.strip()[-500:]}")
    return result.stdout.strip().splitlines()[-1]


class Pyaff4Image:
    """The bytes pyaff4 read at the requested places, as an image the marker
    check and the kernel comparison can read."""

    def __init__(self, pieces):
        self.pieces = pieces  # (address, bytes)
        self.exact = {(a, len(d)): d for a, d in pieces}

    def read(self, address, length):
        if (address, length) in self.exact:
            return self.exact[(address, length)]
        for start, data in self.pieces:
            if start <= address and address + length <= start + len(data):
                return data[address - start:address - start + length]
        return None


def check(path, marker_list, expected, dump, kernel_ranges):
    """(ok, detail): pyaff4 reads every marker page and the kernel's code and
    rodata exactly as planted / as QEMU's dump holds them."""
    wanted = [(address, markers.PAGE_SIZE) for _, address, _ in expected]
    wanted += [(start, last - start + 1) for start, last in kernel_ranges.values()]
    try:
        python = pyaff4_python()
    except RuntimeError as e:
        return False, str(e)
    with tempfile.TemporaryDirectory() as tmp:
        requests, output = Path(tmp) / "requests", Path(tmp) / "bytes"
        requests.write_bytes(b"".join(struct.pack("<QQ", a, n) for a, n in wanted))
        result = subprocess.run([python, "-c", READER, str(path), str(requests), str(output)],
                                capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            return False, f"pyaff4: exit {result.returncode}: {result.stderr.strip()[-400:]}"
        data = output.read_bytes()
    pieces, at = [], 0
    for address, length in wanted:
        pieces.append((address, data[at:at + length]))
        at += length
    image = Pyaff4Image(pieces)
    checked, matching, failures = markers.check(image, marker_list, expected)
    kernel_diffs = []
    for name, (s, l) in sorted(kernel_ranges.items()):
        got, want = image.read(s, l - s + 1), dump.read(s, l - s + 1)
        if got != want:
            first = next((i for i in range(min(len(got or b""), len(want or b""))) if got[i] != want[i]), None)
            kernel_diffs.append(f"{name} differs from {s + (first or 0):#x}")
    kernel_ok = not kernel_diffs
    ok = checked == matching == marker_list.pages and kernel_ok
    return ok, (f"markers {matching}/{checked}, kernel code+rodata "
                f"{'= QEMU dump' if kernel_ok else 'DIFFERS from QEMU dump'}"
                + ("; " + "; ".join(kernel_diffs + failures[:3]) if kernel_diffs or failures else ""))
