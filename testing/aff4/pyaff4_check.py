"""pmem's AFF4 against pyaff4 0.34 (run with the venv of pyaff4-setup.sh).

  pyaff4_check.py make SOURCE.lime                 synthetic memory (LiME)
  pyaff4_check.py read IMAGE.aff4 SOURCE.lime METHOD
        pyaff4 opens pmem's image as an AFF4 physical image
        (Container.openURNtoContainer -> PhysicalImageContainer, image.dataStream),
        checks the Turtle it sees and reads every range byte-exact.
  pyaff4_check.py negative IMAGE.aff4 SOURCE.lime WORK
        the same read must fail on a corrupted chunk and on a wrong reference.
  pyaff4_check.py merged SOURCE.lime OUT.lime     adjacent ranges as one
  pyaff4_check.py symbols-elf SOURCE.lime OUT.elf BUNDLE
        the memory as an ELF core carrying a symbol bundle (a PMEM note of
        type "PSYM"), written here byte by byte; the bundle to BUNDLE.
  pyaff4_check.py symbols IMAGE.aff4 BUNDLE
        pyaff4 follows the map's pmem:symbols to a member of the volume
        and reads the bundle from it byte-exact.
  pyaff4_check.py write SOURCE.lime OUT.aff4 METHOD
        pyaff4 writes the memory as an aff4:Map (category memory/physical)
        for pmem to read.
"""
import io
import json
import os
import random
import shutil
import struct
import sys
import tarfile
import zipfile

LIME_MAGIC = 0x4C694D45
MiB = 1 << 20


def lime_ranges(path):
    """[(start, bytes)] of a LiME file."""
    out = []
    with open(path, "rb") as f:
        while True:
            hdr = f.read(32)
            if not hdr:
                return out
            magic, version, start, end, _ = struct.unpack("<IIQQQ", hdr)
            assert magic == LIME_MAGIC and version == 1, hdr
            out.append((start, f.read(end - start + 1)))


def merged(ranges):
    """Adjacent ranges as one (a map cannot tell them apart)."""
    out = []
    for start, data in ranges:
        if out and out[-1][0] + len(out[-1][1]) == start:
            out[-1] = (out[-1][0], out[-1][1] + data)
        else:
            out.append((start, data))
    return out


def write_lime(path, ranges):
    with open(path, "wb") as f:
        for start, data in ranges:
            f.write(struct.pack("<IIQQQ", LIME_MAGIC, 1, start, start + len(data) - 1, 0))
            f.write(data)


def make(path):
    rng = random.Random(20240511)
    text = b"".join(b"pmem aff4 page %08d of synthetic memory\n" % i for i in range(400000))
    page_ff = b"\xff" * 4096
    counter = b"".join(struct.pack("<Q", i) * 512 for i in range(1024))  # 4 MiB, each page differs
    ranges = [
        (0x1000, rng.randbytes(300 * 1024) + text[: 336 * 1024]),
        (
            0x100000,
            text[: 4 * MiB]
            + bytes(3 * MiB)  # a zero run longer than 1 MiB
            + rng.randbytes(4 * MiB)
            + page_ff * 512
            + bytes(64 * 1024)  # a short zero run
            + counter
            + text[4 * MiB : 13 * MiB],
        ),
        (0x100000000, rng.randbytes(6 * MiB) + text[: 2 * MiB] + bytes(1 * MiB)),
        # adjacent to the range before it
        (0x100900000, text[: 1 * MiB] + rng.randbytes(MiB // 2)),
        (0x140000000, counter[: 2 * MiB + 4096 * 3]),
    ]
    assert all(len(d) % 4096 == 0 for _, d in ranges)
    write_lime(path, ranges)
    total = sum(len(d) for _, d in ranges)
    print(f"source: {len(ranges)} ranges, {total} bytes of memory")


def pyaff4():
    from pyaff4 import container, lexicon, rdfvalue, aff4_map  # noqa: F401

    return container, lexicon, rdfvalue, aff4_map


def open_memory(path):
    container, lexicon, rdfvalue, aff4_map = pyaff4()
    c = container.Container.openURNtoContainer(rdfvalue.URN.FromFileName(path))
    if not isinstance(c, container.PhysicalImageContainer):
        raise SystemExit(
            f"pyaff4 did not open {path} as a physical image (Container.openURNtoContainer -> {c!r})"
        )
    return c


def compare(path, ranges):
    """Problems reading `path` with pyaff4 against `ranges` ([] when equal)."""
    c = open_memory(path)
    stream = c.image.dataStream
    problems = []
    want = [(s, s + len(d)) for s, d in merged(ranges)]
    got = []
    for r in stream.GetRanges():
        if got and got[-1][1] == r.map_offset:
            got[-1] = (got[-1][0], r.map_end)
        else:
            got.append((r.map_offset, r.map_end))
    if got != want:
        problems.append(f"map ranges {[(hex(a), hex(b)) for a, b in got]} != source {[(hex(a), hex(b)) for a, b in want]}")
    for start, data in merged(ranges):
        at = 0
        while at < len(data):
            n = min(MiB, len(data) - at)
            try:
                stream.SeekRead(start + at)
                buf = stream.Read(n)
            except Exception as e:  # a chunk pyaff4 cannot decode
                problems.append(f"read at {start + at:#x}: {type(e).__name__}: {e}")
                break
            if buf != data[at : at + n]:
                diff = next(
                    (i for i in range(min(len(buf), n)) if buf[i] != data[at + i]),
                    min(len(buf), n),
                )
                problems.append(f"bytes differ at {start + at + diff:#x} (read {len(buf)} of {n})")
                break
            at += n
    return problems, c, stream


def check_read(path, lime, method):
    container, lexicon, rdfvalue, aff4_map = pyaff4()
    ranges = lime_ranges(lime)
    problems, c, stream = compare(path, ranges)
    if problems:
        raise SystemExit(f"pyaff4 read of {path}:\n  " + "\n  ".join(problems))
    memory = sum(len(d) for _, d in ranges)

    # The Turtle as pyaff4's resolver has it.
    r, v = c.resolver, c.urn
    A = lexicon.AFF4_NAMESPACE

    def objs(s, p):
        return [str(o) for o in r.QuerySubjectPredicate(v, s, p)]

    image, m = c.image.urn, stream.urn
    assert isinstance(stream, aff4_map.AFF4Map), type(stream)
    assert objs(image, A + "dataStream") == [str(m)], objs(image, A + "dataStream")
    assert A + "Map" in objs(m, lexicon.AFF4_TYPE), objs(m, lexicon.AFF4_TYPE)
    cat = objs(m, lexicon.AFF4_CATEGORY)
    assert cat == [lexicon.AFF4_MEMORY_PHYSICAL], cat
    end = max(s + len(d) for s, d in ranges)
    assert stream.Size() == end, (stream.Size(), end)
    deps = objs(m, A + "dependentStream")
    assert len(deps) == 1, deps
    s = deps[0]
    assert A + "ImageStream" in objs(s, lexicon.AFF4_TYPE), objs(s, lexicon.AFF4_TYPE)
    assert objs(s, A + "chunkSize") == ["32768"], objs(s, A + "chunkSize")
    assert objs(s, A + "chunksInSegment") == ["1024"], objs(s, A + "chunksInSegment")
    iri = {
        "snappy": lexicon.AFF4_IMAGE_COMPRESSION_SNAPPY,
        "lz4": lexicon.AFF4_IMAGE_COMPRESSION_LZ4,
        "deflate": lexicon.AFF4_IMAGE_COMPRESSION_ZLIB,
        "none": lexicon.AFF4_IMAGE_COMPRESSION_NONE,
    }[method]
    assert objs(s, A + "compressionMethod") == [iri], objs(s, A + "compressionMethod")
    targets = sorted({str(t) for t in stream.targets})
    assert s in targets, (s, targets)
    arch = objs(m, "https://github.com/pmem-rs/pmem/aff4#architecture")
    assert arch == ["x86_64"], arch

    # Gaps, as pyaff4 defines them: a read that lies wholly in a gap returns
    # nothing; a read from a gap into a range returns zeros up to the range.
    mr = merged(ranges)
    for (a, da), (b, _) in zip(mr, mr[1:]):
        gap_start, gap_end = a + len(da), b
        stream.SeekRead(gap_start)
        got = stream.Read(min(4096, gap_end - gap_start))
        assert not got, (hex(gap_start), len(got))
        stream.SeekRead(gap_end - 4096)
        got = stream.Read(8192)
        assert got == bytes(4096) + mr[mr.index((b, _))][1][:4096], hex(gap_end)
    stream.SeekRead(end)
    assert not stream.Read(4096)
    print(
        f"pyaff4 ({method}): {memory} bytes in {len(mr)} runs read byte-exact; "
        f"map {m} category memory/physical over {s}; gaps read as pyaff4 defines them; "
        f"{len(stream.GetRanges())} map entries, targets {targets}"
    )


def chunk_offset(image, stream_urn, chunk):
    """File offset of chunk `chunk` of bevy 0 (read from pmem's .index member)."""
    name = stream_urn.replace("aff4://", "aff4%3A%2F%2F") + "/00000000"
    z = zipfile.ZipFile(image)
    index = z.read(name + ".index")
    off, length = struct.unpack_from("<QI", index, 12 * chunk)
    info = z.getinfo(name)
    assert info.compress_type == zipfile.ZIP_STORED
    with open(image, "rb") as f:
        f.seek(info.header_offset)
        h = f.read(30)
        n, e = struct.unpack_from("<HH", h, 26)
    return info.header_offset + 30 + n + e + off, length


def negative(image, lime, work):
    ranges = lime_ranges(lime)
    c = open_memory(image)
    stream = c.image.dataStream
    s = str(next(t for t in stream.targets if "Schema#" not in str(t)))
    # Chunk 0 of the stream is the first range's random bytes (snappy stores
    # them as literals): one flipped byte in its middle changes memory there.
    bad = os.path.join(work, "corrupt.aff4")
    shutil.copyfile(image, bad)
    at, length = chunk_offset(image, s, 0)
    with open(bad, "r+b") as f:
        f.seek(at + length // 2)
        b = f.read(1)
        f.seek(at + length // 2)
        f.write(bytes([b[0] ^ 0x5A]))
    problems, _, _ = compare(bad, ranges)
    first = ranges[0][0]
    if not problems or not any(
        p.startswith("bytes differ at 0x") and first <= int(p.split()[3], 16) < first + 32768
        or p.startswith("read at ")
        for p in problems
    ):
        raise SystemExit(f"a corrupted chunk went unnoticed: {problems}")
    print(f"negative: corrupted chunk 0 -> {problems[0]}")
    # A reference that differs in one byte is reported at that address.
    where = 0x100000 + 5 * MiB + 123
    wrong = [(s0, bytearray(d)) for s0, d in ranges]
    for s0, d in wrong:
        if s0 <= where < s0 + len(d):
            d[where - s0] ^= 1
    problems, _, _ = compare(image, [(s0, bytes(d)) for s0, d in wrong])
    if problems != [f"bytes differ at {where:#x} (read {MiB} of {MiB})"]:
        raise SystemExit(f"a wrong reference was not reported at {where:#x}: {problems}")
    print(f"negative: wrong reference -> {problems[0]}")


def write(lime, out, method):
    """pyaff4 writes `lime`'s memory as an AFF4 physical-memory Map."""
    from pyaff4 import aff4_map, container, data_store, lexicon, rdfvalue, zip as azip

    iri = {
        "snappy": lexicon.AFF4_IMAGE_COMPRESSION_SNAPPY,
        "lz4": lexicon.AFF4_IMAGE_COMPRESSION_LZ4,
        "deflate": lexicon.AFF4_IMAGE_COMPRESSION_ZLIB,
    }[method]
    if os.path.exists(out):
        os.unlink(out)
    urn = rdfvalue.URN.FromFileName(out)
    with data_store.MemoryDataStore() as resolver:
        resolver.Set(lexicon.transient_graph, urn, lexicon.AFF4_STREAM_WRITE_MODE, rdfvalue.XSDString("truncate"))
        with azip.ZipFile.NewZipFile(resolver, container.Version(1, 1, "pyaff4"), urn) as volume:
            map_urn = volume.urn.Append("PhysicalMemory")
            resolver.Set(volume.urn, map_urn.Append("data"), lexicon.AFF4_IMAGE_COMPRESSION, rdfvalue.URN(iri))
            with aff4_map.AFF4Map.NewAFF4Map(resolver, map_urn, volume.urn) as m:
                for start, data in lime_ranges(lime):
                    for at in range(0, len(data), MiB):
                        m.SeekWrite(start + at)
                        m.Write(data[at : at + MiB])
            resolver.Set(volume.urn, map_urn, lexicon.AFF4_CATEGORY, rdfvalue.URN(lexicon.AFF4_MEMORY_PHYSICAL))
    print(f"pyaff4 wrote {out} ({method}, {os.path.getsize(out)} bytes)")


PMEM_NS = "https://github.com/pmem-rs/pmem/aff4#"


def symbol_bundle(btf):
    """A symbol bundle as pmem writes one (a tar: capture.json first, then
    the members), made with Python's tarfile: pmem checks what it carries."""
    record = {"kind": "pmem-symbols-bundle", "version": 1, "kallsyms_addresses": "absent",
              "files": [{"name": "btf/vmlinux", "source": "pyaff4_check.py", "bytes": len(btf)}],
              "seconds": 0.0}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("capture.json", json.dumps(record).encode()), ("btf/vmlinux", btf)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def symbols_elf(lime, out, bundle_path):
    """An ELF64 core (as pmem lays it out: PT_NOTE, then one PT_LOAD per
    range at page-aligned offsets) with a symbol bundle note."""
    ranges = lime_ranges(lime)
    bundle = symbol_bundle(random.Random(7).randbytes(3 * MiB + 5))
    with open(bundle_path, "wb") as f:
        f.write(bundle)

    def pad4(b):
        return b + bytes(-len(b) % 4)

    # namesz, descsz, type ("PSYM" little-endian), name, descriptor.
    note = struct.pack("<III", 5, len(bundle), int.from_bytes(b"PSYM", "little"))
    note += pad4(b"PMEM\0") + pad4(bundle)
    phnum = 1 + len(ranges)
    notes_at = 64 + 56 * phnum
    offsets, at = [], notes_at + len(note)
    for _, data in ranges:
        at = (at + 4095) // 4096 * 4096
        offsets.append(at)
        at += len(data)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, notes_at, 0, 0, len(note), len(note), 4)
    for (start, data), offset in zip(ranges, offsets):
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, offset, 0, start, len(data), len(data), 0)
    with open(out, "wb") as f:
        f.write(ehdr + phdrs + note)
        for (_, data), offset in zip(ranges, offsets):
            f.seek(offset)
            f.write(data)


def check_symbols(image, bundle_path):
    container, lexicon, rdfvalue, aff4_map = pyaff4()
    c = open_memory(image)
    r, m = c.resolver, c.image.dataStream.urn
    named = [str(o) for o in r.QuerySubjectPredicate(c.urn, m, PMEM_NS + "symbols")]
    assert len(named) == 1, named
    with r.AFF4FactoryOpen(rdfvalue.URN(named[0])) as member:
        got = member.Read(member.Size())
    with open(bundle_path, "rb") as f:
        want = f.read()
    assert got == want, (named[0], len(got), len(want))
    print(f"pyaff4: pmem:symbols names {named[0]} ({type(member).__name__}), {len(got)} bytes read byte-exact")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "make":
        make(*args)
    elif cmd == "read":
        check_read(*args)
    elif cmd == "negative":
        negative(*args)
    elif cmd == "write":
        write(*args)
    elif cmd == "symbols-elf":
        symbols_elf(*args)
    elif cmd == "symbols":
        check_symbols(*args)
    elif cmd == "merged":
        write_lime(args[1], merged(lime_ranges(args[0])))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
