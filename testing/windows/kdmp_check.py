"""Proves that kdmp-parser (the C++ crash dump parser behind several Windows
dump tools, here through its Python bindings) reads pmem's crash dumps
page-exact.

    python3 kdmp_check.py PMEM_BINARY WORKDIR [MIB]

Installs kdmp-parser (pinned) into a venv of its own under
${PMEM_GUEST_CACHE:-${PMEM_CACHE:-~/.cache/pmem}/guest}/kdmp-venv on first use and re-runs
itself there. Builds synthetic memory as a LiME file (synthetic.py, written
independently of pmem), converts it with `pmem convert --format dmp`, and for
  * a full dump (DumpType 1, 40 runs) and
  * a bitmap dump (DumpType 5, 300 runs, with a last run whose top page is
    not at a multiple of 8 pages, where a short BitmapSize loses pages)
opens the dump with kdmp_parser.KernelDumpParser, checks the dump type and
the DTB, that the pages it lists are exactly the planned ranges' pages, and
compares EVERY page it reads with the LiME source.

Negatives (so that the check can fail): a header whose ValidDump is broken,
and a bitmap dump whose summary carries the "DU64" pmem used to write there,
are refused. kdmp-parser reads 64-bit dumps only (its HEADER64): that pmem's
32-bit dumps are refused is checked too, so the README's statement stays true.

Results go to stdout as one JSON line per dump; progress and kdmp-parser's
own messages go to stderr.
"""

import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from synthetic import PAGE, lime_records, make_lime  # noqa: E402

KDMP_PARSER = "kdmp-parser==0.7.4"
sys.path.insert(0, str(HERE.parent / "guest"))
from env import CACHE  # noqa: E402  (the project's one cache root, PMEM_CACHE)
VENV = CACHE / "kdmp-venv"
CR3 = 0x1AA000


def log(message):
    print(f"[kdmp] {message}", file=sys.stderr, flush=True)


def ensure_venv():
    """kdmp-parser, pinned, in its own venv; returns the venv's python."""
    python = VENV / "bin" / "python3"
    stamp = VENV / f".{KDMP_PARSER}"
    if not stamp.exists():
        log(f"installing {KDMP_PARSER} into {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, stdout=sys.stderr)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", KDMP_PARSER],
            check=True,
            stdout=sys.stderr,
        )
        stamp.touch()
    return python


def parse(path):
    """kdmp_parser.KernelDumpParser(path), or the refusal: (None, messages).
    The library prints its reasons with printf on stdout; they are caught
    here so that stdout keeps only this script's results."""
    import kdmp_parser

    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 1)
        try:
            dump = kdmp_parser.KernelDumpParser(path)
            error = None
        except RuntimeError as e:
            dump, error = None, str(e)
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        caught.seek(0)
        messages = caught.read().decode(errors="replace").strip()
    if messages:
        print(messages, file=sys.stderr, flush=True)
    return dump, error, messages


def convert(pmem, lime, dump, arch):
    for p in (dump, Path(str(dump) + ".json")):
        if p.exists():
            p.unlink()
    subprocess.run(
        [pmem, "convert", "--quiet", "--format", "dmp", "--cr3", hex(CR3), "--build", "19041",
         "--processors", "4", "--arch", arch, str(lime), str(dump)],
        check=True,
        stdout=sys.stderr,
    )


def check(pmem, workdir, name, runs, mib, expect_type, tail=()):
    import kdmp_parser

    lime = workdir / f"{name}.lime"
    dump = workdir / f"{name}.dmp"
    ranges = make_lime(lime, runs, mib, seed=runs, tail=tail)
    convert(pmem, lime, dump, "x86_64")
    parsed, error, messages = parse(dump)
    assert parsed is not None, f"{name}: kdmp-parser refused pmem's dump: {error}: {messages}"
    assert parsed.type == expect_type, f"{name}: dump type {parsed.type!r}, expected {expect_type!r}"
    assert parsed.directory_table_base == CR3, f"{name}: DTB {parsed.directory_table_base:#x}"

    planned = {addr for start, end in ranges for addr in range(start, end, PAGE)}
    listed = set(parsed.pages.keys())
    missing, extra = sorted(planned - listed), sorted(listed - planned)
    assert not missing and not extra, (
        f"{name}: kdmp-parser lists {len(listed)} pages, the plan {len(planned)}; "
        f"missing {[hex(a) for a in missing[:4]]}, extra {[hex(a) for a in extra[:4]]}"
    )
    compared = 0
    with open(lime, "rb") as src:
        for start, end, offset in lime_records(lime):
            src.seek(offset)
            for addr in range(start, end, PAGE):
                expected = src.read(PAGE)
                got = parsed.read_physical_page(addr)
                assert got is not None, f"{name}: page {addr:#x} listed but not readable"
                if bytes(got) != expected:
                    bad = next(i for i in range(PAGE) if got[i] != expected[i])
                    raise AssertionError(f"{name}: byte at {addr + bad:#x} differs")
                compared += 1
    # A hole (the page before the first run) is not there.
    assert parsed.read_physical_page(ranges[0][0] - PAGE) is None, f"{name}: a hole reads"
    result = {
        "dump": name,
        "reader": KDMP_PARSER,
        "dump_type": int(parsed.type),
        "runs": len(ranges),
        "pages_compared": compared,
        "dump_bytes": os.path.getsize(dump),
    }
    print(json.dumps(result), flush=True)
    return dump


def refused(name, path, expect_message):
    """kdmp-parser must refuse `path`, saying `expect_message`."""
    parsed, _, messages = parse(path)
    assert parsed is None, f"{name}: kdmp-parser accepted it"
    assert expect_message in messages, f"{name}: refused, but said {messages!r}"
    print(json.dumps({"dump": name, "reader": KDMP_PARSER, "refused": expect_message}), flush=True)


def patched(src, dst, offset, data):
    raw = bytearray(src.read_bytes())
    raw[offset:offset + len(data)] = data
    dst.write_bytes(raw)
    return dst


def main():
    if len(sys.argv) < 3:
        raise SystemExit("usage: kdmp_check.py PMEM_BINARY WORKDIR [MIB]")
    python = ensure_venv()
    if Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(python), [str(python), __file__, *sys.argv[1:]])

    import kdmp_parser

    pmem, workdir = sys.argv[1], Path(sys.argv[2])
    mib = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    workdir.mkdir(parents=True, exist_ok=True)
    DumpType = kdmp_parser.DumpType

    full = check(pmem, workdir, "full", 40, mib, DumpType.FullDump)
    # Three pages ending at pfn 0x100_0003 (64 GiB + 12 KiB): the top set
    # bits then lie past the last whole byte of a BitmapSize that is the
    # highest pfn + 1, which kdmp-parser reads as BitmapSize / 8 bytes.
    top = 0x100_0003 * PAGE
    bitmap = check(pmem, workdir, "bitmap", 300, mib, DumpType.BMPDump,
                   tail=[(top - 3 * PAGE, top)])

    refused("full, ValidDump broken", patched(full, workdir / "bad-valid.dmp", 4, b"DU6X"),
            "HEADER64::ValidDump looks wrong")
    refused("bitmap, summary ValidDump DU64 (older pmem)",
            patched(bitmap, workdir / "old-summary.dmp", 0x2004, b"DU64"),
            "BMP_HEADER64::ValidDump looks wrong")
    refused("bitmap, summary signature broken",
            patched(bitmap, workdir / "bad-summary.dmp", 0x2000, b"XDMP"),
            "BMP_HEADER64::Signature looks wrong")

    lime32 = workdir / "full32.lime"
    make_lime(lime32, 8, 4, seed=8)
    convert(pmem, lime32, workdir / "full32.dmp", "i686")
    refused("32-bit (kdmp-parser reads 64-bit dumps only)", workdir / "full32.dmp",
            "HEADER64::ValidDump looks wrong")
    print("kdmp-parser read pmem's full and bitmap dumps page-exact and refused the broken ones")


if __name__ == "__main__":
    main()
