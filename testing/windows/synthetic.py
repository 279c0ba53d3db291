"""Synthetic physical memory for the crash dump checks, written as a LiME
file here, independently of pmem (vol3_dmp.py, kdmp_check.py)."""

import os
import random
import struct

PAGE = 4096
LIME_MAGIC = 0x4C694D45


def make_lime(path, runs, total_mib, seed, tail=()):
    """Writes a LiME file of `runs` page-aligned ranges holding about
    `total_mib` MiB, then the ranges of `tail` (above them); returns
    [(start, end)]. Content: per 64 KiB block either random bytes or zeros
    (about one block in five), so zero pages (holes in the dump) sit between
    data pages."""
    rng = random.Random(seed)
    pages_total = total_mib * 256
    sizes = [pages_total // runs] * runs
    sizes[-1] += pages_total - sum(sizes)
    planned = []
    at = 0x1000  # page 0 stays out, like on real machines
    for pages in sizes:
        planned.append((at, at + pages * PAGE))
        # Gaps of 1..16 pages; now and then above 4 GiB.
        at = at + pages * PAGE + rng.randint(1, 16) * PAGE
        if rng.random() < 0.02:
            at += 1 << 32
    for start, end in tail:
        assert start >= planned[-1][1], f"tail range {start:#x} lies below the runs' end"
        planned.append((start, end))
    with open(path, "wb") as out:
        for start, end in planned:
            out.write(struct.pack("<IIQQQ", LIME_MAGIC, 1, start, end - 1, 0))
            left = end - start
            while left:
                n = min(left, 64 * 1024)
                out.write(bytes(n) if rng.random() < 0.2 else os.urandom(n))
                left -= n
    return planned


def lime_records(path):
    """[(start, end, file offset)] of a LiME file, parsed here."""
    records = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            f.seek(offset)
            magic, version, start, last, _ = struct.unpack("<IIQQQ", f.read(32))
            assert (magic, version) == (LIME_MAGIC, 1), f"bad LiME header at {offset:#x}"
            records.append((start, last + 1, offset + 32))
            offset += 32 + last + 1 - start
    return records
