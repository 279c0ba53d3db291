"""Independent readers for the image formats pmem writes, and for QEMU's dump.

These deliberately share no code with pmem: using pmem's own reader to judge
pmem's writer would let a bug that is symmetric in both go unnoticed. Each
reader checks the container's structure strictly (any oddity raises
ImageError with the reason) and exposes the image as physical segments.

To add a format: write a class with the same interface as Image (a list of
Segment and, if the format has them, structural checks in its constructor),
then register it in open_image() below.
"""

import hashlib
import os
import struct
import subprocess
from dataclasses import dataclass

LIME_MAGIC = 0x4C694D45  # "EMiL" on disk, little-endian
LIME_HEADER = struct.Struct("<IIQQ8s")  # magic, version, start, last (inclusive), reserved

PT_LOAD = 1
PN_XNUM = 0xFFFF
EM_X86_64 = 62
EM_AARCH64 = 183  # arm64 guests (arm64.py)
ET_CORE = 4


class ImageError(Exception):
    """The image's container is malformed; the message says how."""


@dataclass(frozen=True)
class Segment:
    start: int  # physical address of the first byte
    length: int
    offset: int  # file offset of the first byte

    @property
    def last(self):
        return self.start + self.length - 1


class Image:
    """Physical memory held by an image file, as sorted segments."""

    kind = "?"

    def __init__(self, path, segments):
        self.path = str(path)
        self.file = open(path, "rb")
        self.size = os.fstat(self.file.fileno()).st_size
        self.segments = sorted(segments, key=lambda s: s.start)
        for a, b in zip(self.segments, self.segments[1:]):
            if b.start <= a.last:
                raise ImageError(f"{self.path}: segments overlap at {b.start:#x}")
        for s in self.segments:
            if s.length <= 0 or s.offset + s.length > self.size:
                raise ImageError(
                    f"{self.path}: segment {s.start:#x}+{s.length:#x} at offset "
                    f"{s.offset:#x} runs past the end of the file ({self.size:#x})"
                )

    def close(self):
        self.file.close()

    def ranges(self):
        """Covered physical ranges as (start, last inclusive), adjacent merged."""
        merged = []
        for s in self.segments:
            if merged and merged[-1][1] + 1 == s.start:
                merged[-1] = (merged[-1][0], s.last)
            else:
                merged.append((s.start, s.last))
        return merged

    def read(self, address, length):
        """Bytes at [address, address+length), or None if not all covered."""
        out = bytearray()
        for s in self.segments:
            if s.last < address or not length:
                continue
            if s.start > address:
                break
            take = min(length, s.last - address + 1)
            self.file.seek(s.offset + (address - s.start))
            out += self.file.read(take)
            address += take
            length -= take
        return bytes(out) if length == 0 else None

    def memory_hash(self, algorithm):
        """The hash of all covered bytes in address order (pmem's memory_hash),
        in `algorithm`: "sha256" (hashlib) or "blake3" (Debian's b3sum)."""
        digest = new_digest(algorithm)
        for s in self.segments:
            self.file.seek(s.offset)
            left = s.length
            while left:
                chunk = self.file.read(min(left, 8 << 20))
                if not chunk:
                    raise ImageError(f"{self.path}: short read at segment {s.start:#x}")
                digest.update(chunk)
                left -= len(chunk)
        return digest.hexdigest()


class B3sum:
    """A hashlib-like BLAKE3 digest fed to Debian's `b3sum` through a pipe
    (Python's standard library has no BLAKE3)."""

    def __init__(self):
        self.proc = subprocess.Popen(["b3sum", "--no-names"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=False)

    def update(self, data):
        self.proc.stdin.write(data)

    def hexdigest(self):
        out, _ = self.proc.communicate()
        if self.proc.returncode != 0:
            raise ImageError(f"b3sum exited {self.proc.returncode}")
        return out.decode().strip()


def new_digest(algorithm):
    """A digest of pmem's algorithm names: "sha256" or "blake3"."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "blake3":
        return B3sum()
    raise ImageError(f"unknown hash algorithm {algorithm!r}")


def manifest_hash(manifest, name):
    """(algorithm, hex) of the manifest's `name` hash ("image", "memory"):
    schema 2's `NAME_hash` object, else schema 1's `NAME_sha256`; (None, None)
    when it records none."""
    record = manifest.get(f"{name}_hash")
    if isinstance(record, dict):
        return record.get("algorithm"), record.get("hex")
    if manifest.get(f"{name}_sha256"):
        return "sha256", manifest[f"{name}_sha256"]
    return None, None


class LimeImage(Image):
    """LiME: a header before each range; version 1, inclusive end address."""

    kind = "lime"

    def __init__(self, path):
        segments = []
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            offset = 0
            while offset < size:
                f.seek(offset)
                raw = f.read(LIME_HEADER.size)
                if len(raw) < LIME_HEADER.size:
                    raise ImageError(f"{path}: truncated LiME header at offset {offset:#x}")
                magic, version, start, last, _ = LIME_HEADER.unpack(raw)
                if magic != LIME_MAGIC:
                    raise ImageError(f"{path}: bad LiME magic {magic:#x} at offset {offset:#x}")
                if version != 1:
                    raise ImageError(f"{path}: LiME version {version} at offset {offset:#x}")
                if last < start:
                    raise ImageError(f"{path}: LiME range {start:#x}-{last:#x} is reversed")
                if segments and start <= segments[-1].last:
                    raise ImageError(f"{path}: LiME ranges not ascending at {start:#x}")
                length = last - start + 1
                segments.append(Segment(start, length, offset + LIME_HEADER.size))
                offset += LIME_HEADER.size + length
            if offset != size:
                raise ImageError(f"{path}: last LiME range runs past the end of the file")
        super().__init__(path, segments)


class ElfImage(Image):
    """ELF64 core file; each PT_LOAD's p_paddr is its physical address.

    Used both for pmem's ELF images and for QEMU's dump-guest-memory output.
    """

    kind = "elf"

    def __init__(self, path):
        with open(path, "rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF":
                raise ImageError(f"{path}: not an ELF file")
            if ident[4] != 2 or ident[5] != 1:
                raise ImageError(f"{path}: not ELF64 little-endian")
            e_type, e_machine = struct.unpack_from("<HH", ident, 16)
            (e_phoff,) = struct.unpack_from("<Q", ident, 32)
            (e_shoff,) = struct.unpack_from("<Q", ident, 40)
            e_phentsize, e_phnum = struct.unpack_from("<HH", ident, 54)
            if e_type != ET_CORE:
                raise ImageError(f"{path}: ELF type {e_type}, expected ET_CORE")
            if e_machine not in (EM_X86_64, EM_AARCH64):
                raise ImageError(f"{path}: ELF machine {e_machine}, expected x86-64 or aarch64")
            if e_phentsize != 56:
                raise ImageError(f"{path}: program header size {e_phentsize}")
            if e_phnum == PN_XNUM:
                # More than 65534 headers: the real count is in section 0's sh_info.
                f.seek(e_shoff + 44)
                (e_phnum,) = struct.unpack("<I", f.read(4))
            f.seek(e_phoff)
            table = f.read(56 * e_phnum)
            if len(table) != 56 * e_phnum:
                raise ImageError(f"{path}: program header table is truncated")
        self.notes = 0
        segments = []
        for i in range(e_phnum):
            p_type, _, p_offset, _, p_paddr, p_filesz, p_memsz, _ = struct.unpack_from(
                "<IIQQQQQQ", table, 56 * i
            )
            if p_type != PT_LOAD:
                self.notes += 1
                continue
            if p_filesz != p_memsz:
                raise ImageError(
                    f"{path}: PT_LOAD at {p_paddr:#x} has filesz {p_filesz:#x} != memsz {p_memsz:#x}"
                )
            if p_filesz:
                segments.append(Segment(p_paddr, p_filesz, p_offset))
        super().__init__(path, segments)


class RawImage(Image):
    """Zero-padded raw: file offset == physical address. The file cannot say
    which bytes are memory, so the ranges come from pmem's manifest; the
    padding between them must be zero and the file must end at the last range.
    """

    kind = "raw"

    def __init__(self, path, ranges):
        super().__init__(path, [Segment(a, b - a + 1, a) for a, b in ranges])
        if self.segments and self.size != self.segments[-1].last + 1:
            raise ImageError(
                f"{path}: raw image is {self.size:#x} bytes, expected {self.segments[-1].last + 1:#x}"
            )

    def padding_is_zero(self):
        position = 0
        zeros = bytes(1 << 20)
        for s in self.segments + [Segment(self.size, 0, self.size)]:
            self.file.seek(position)
            while position < s.start:
                chunk = self.file.read(min(len(zeros), s.start - position))
                if chunk != zeros[: len(chunk)]:
                    return False
                position += len(chunk)
            position = s.start + s.length
        return True


MH_MAGIC_64 = 0xFEEDFACF
MH_CORE = 4
LC_SEGMENT_64 = 0x19
CPU_TYPE_X86_64 = 0x01000007
CPU_TYPE_ARM64 = 0x0100000C  # arm64 guests (arm64.py)


class MachoImage(Image):
    """Mach-O 64-bit core as OSXPMem wrote it: one LC_SEGMENT_64 per range,
    vmaddr = physical address; segments with filesize 0 hold no bytes."""

    kind = "macho"

    def __init__(self, path):
        with open(path, "rb") as f:
            header = f.read(32)
            if len(header) < 32:
                raise ImageError(f"{path}: shorter than a Mach-O header")
            magic, cputype, _, filetype, ncmds, sizeofcmds, _, _ = struct.unpack("<IiiIIIII", header)
            if magic != MH_MAGIC_64:
                raise ImageError(f"{path}: magic {magic:#x}, expected MH_MAGIC_64")
            if filetype != MH_CORE:
                raise ImageError(f"{path}: file type {filetype}, expected MH_CORE")
            if cputype not in (CPU_TYPE_X86_64, CPU_TYPE_ARM64):
                raise ImageError(f"{path}: cputype {cputype:#x}, expected CPU_TYPE_X86_64 or CPU_TYPE_ARM64")
            commands = f.read(sizeofcmds)
            if len(commands) != sizeofcmds:
                raise ImageError(f"{path}: load commands truncated")
        segments, at = [], 0
        for i in range(ncmds):
            if at + 8 > len(commands):
                raise ImageError(f"{path}: load command {i} runs past sizeofcmds")
            cmd, cmdsize = struct.unpack_from("<II", commands, at)
            if cmdsize < 8 or at + cmdsize > len(commands):
                raise ImageError(f"{path}: load command {i} has size {cmdsize}")
            if cmd == LC_SEGMENT_64:
                _, vmaddr, vmsize, fileoff, filesize = struct.unpack_from("<16sQQQQ", commands, at + 8)
                if filesize and filesize != vmsize:
                    raise ImageError(f"{path}: segment at {vmaddr:#x}: filesize {filesize:#x} != vmsize {vmsize:#x}")
                if filesize:
                    segments.append(Segment(vmaddr, filesize, fileoff))
            at += cmdsize
        super().__init__(path, segments)


def open_image(path, fmt, manifest=None):
    if fmt == "lime":
        return LimeImage(path)
    if fmt == "elf":
        return ElfImage(path)
    if fmt == "macho":
        return MachoImage(path)
    if fmt == "raw":
        if manifest is None:
            raise ImageError(f"{path}: a raw image needs its manifest for ranges")
        return RawImage(path, [(int(r["start"], 16), int(r["last"], 16)) for r in manifest["ranges"]])
    raise ImageError(f"no reader for format {fmt!r}")


def file_hash(path, algorithm="sha256"):
    """The file's hash in `algorithm` ("sha256" or "blake3", as new_digest)."""
    if algorithm == "blake3":
        out = subprocess.run(["b3sum", "--no-names", str(path)], check=True,
                             capture_output=True, text=True).stdout
        return out.strip()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()
