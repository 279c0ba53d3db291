//! Synthetic kcore, iomem and device files for tests (feature `testing`).
//!
//! Memory content is deterministic: the byte at physical address `a` is
//! [`pattern_byte`]`(a)`, so a test can check what it read anywhere. Files
//! are sparse: segment contents are written at their offsets, untouched
//! spans cost no disk.

use crate::kcore::NO_PADDR;
use object::elf;
use object::{Endianness, U16, U32, U64};
use pmem_core::{Arch, Range, PAGE_SIZE};
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

/// Where [`Segment::ram`] puts physical 0: x86_64's page_offset_base
/// without KASLR.
pub const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;

/// The test byte at a physical address: never zero (so it can't pass for
/// a hole) and different for neighbouring addresses and pages. Inline:
/// the FUSE fixture, optimised in test builds, computes it per byte served.
#[inline]
pub fn pattern_byte(phys: u64) -> u8 {
    // A per-256-byte-block offset, so that blocks and pages differ, plus
    // the low address byte, so that neighbours within a block differ.
    let block = ((phys >> 8).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
    match (phys as u8).wrapping_add(block) {
        0 => 0x80,
        b => b,
    }
}

/// `len` pattern bytes from physical `phys`.
pub fn pattern(phys: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(phys + i)).collect()
}

/// What a segment holds in the file.
/// What a test segment's file bytes hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Nothing: the file is not extended to cover the segment (vmalloc and
    /// other non-RAM segments, which are never read).
    Absent,
    /// Zeros, as a hole inside the file.
    Zeros,
    /// Every byte the same.
    Fill(u8),
    /// Byte i is `pattern_byte(phys + i)`.
    Pattern {
        /// The physical address of the segment's first byte.
        phys: u64,
    },
    /// The pattern only on the listed segment-relative page indices, zeros
    /// elsewhere: cheap "large" segments.
    PatternPages {
        /// The physical address of the segment's first byte.
        phys: u64,
        /// The pages (from 0, of [`PAGE_SIZE`] bytes) that hold the pattern.
        pages: Vec<u64>,
    },
    /// These bytes, then zeros up to the segment's size.
    Bytes(Vec<u8>),
}

/// One PT_LOAD segment of a test kcore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Kernel virtual address (p_vaddr).
    pub vaddr: u64,
    /// Physical address (p_paddr): [`NO_PADDR`] for non-RAM, 0 on old
    /// kernels.
    pub paddr: u64,
    /// Bytes in memory and in the file.
    pub size: u64,
    /// What the file holds for it.
    pub content: Content,
}

impl Segment {
    /// A direct-map RAM segment as kernels >= 4.11 write it.
    pub fn ram(phys: u64, size: u64) -> Segment {
        Segment {
            vaddr: DIRECT_MAP.wrapping_add(phys),
            paddr: phys,
            size,
            content: Content::Pattern { phys },
        }
    }

    /// A direct-map RAM segment as kernels before 4.11 write it (p_paddr 0).
    pub fn old_kernel_ram(phys: u64, size: u64) -> Segment {
        Segment {
            paddr: 0,
            ..Segment::ram(phys, size)
        }
    }

    /// vmalloc, vmemmap, modules: p_paddr -1, no content.
    pub fn not_ram(vaddr: u64, size: u64) -> Segment {
        Segment {
            vaddr,
            paddr: NO_PADDR,
            size,
            content: Content::Absent,
        }
    }

    /// The same segment at another p_paddr.
    pub fn with_paddr(self, paddr: u64) -> Segment {
        Segment { paddr, ..self }
    }

    /// The same segment with other file bytes.
    pub fn with_content(self, content: Content) -> Segment {
        Segment { content, ..self }
    }
}

/// Builds an ELF64 little-endian kcore: one PT_NOTE (a CORE prstatus-like
/// note, then VMCOREINFO if set), then one PT_LOAD per segment.
#[derive(Debug, Clone)]
pub struct KcoreBuilder {
    arch: Arch,
    segments: Vec<Segment>,
    vmcoreinfo: Option<Vec<u8>>,
}

impl KcoreBuilder {
    /// A kcore of `arch` with no segment and no VMCOREINFO.
    pub fn new(arch: Arch) -> KcoreBuilder {
        KcoreBuilder {
            arch,
            segments: Vec::new(),
            vmcoreinfo: None,
        }
    }

    /// Adds a PT_LOAD segment, after those already added.
    pub fn segment(mut self, segment: Segment) -> KcoreBuilder {
        self.segments.push(segment);
        self
    }

    /// Adds a VMCOREINFO note with this descriptor.
    pub fn vmcoreinfo(mut self, descriptor: &[u8]) -> KcoreBuilder {
        self.vmcoreinfo = Some(descriptor.to_vec());
        self
    }

    /// Writes the file; returns each segment's file offset.
    pub fn write(&self, path: &Path) -> io::Result<Vec<u64>> {
        let e = Endianness::Little;
        let mut notes = Vec::new();
        push_note(&mut notes, b"CORE", elf::NT_PRSTATUS, &[0; 336]);
        if let Some(info) = &self.vmcoreinfo {
            push_note(&mut notes, b"VMCOREINFO", 0, info);
        }
        let header_size = size_of::<elf::FileHeader64<Endianness>>() as u64;
        let entry = size_of::<elf::ProgramHeader64<Endianness>>() as u64;
        let count = self.segments.len() as u64 + 1;
        let notes_offset = header_size + entry * count;
        // Absent segments go last so that they never make the file longer.
        let mut order: Vec<usize> = (0..self.segments.len()).collect();
        order.sort_by_key(|&i| self.segments[i].content == Content::Absent);
        let mut offsets = vec![0u64; self.segments.len()];
        let mut cursor = align(notes_offset + notes.len() as u64);
        let mut length = cursor;
        for i in order {
            let s = &self.segments[i];
            offsets[i] = cursor;
            cursor = align(cursor.saturating_add(s.size));
            if s.content != Content::Absent {
                length = length.max(offsets[i] + s.size);
            }
        }

        let header = elf::FileHeader64::<Endianness> {
            e_ident: elf::Ident {
                magic: elf::ELFMAG,
                class: elf::ELFCLASS64,
                data: elf::ELFDATA2LSB,
                version: elf::EV_CURRENT,
                os_abi: elf::ELFOSABI_NONE,
                abi_version: 0,
                padding: [0; 7],
            },
            e_type: U16::new(e, elf::ET_CORE),
            e_machine: U16::new(e, self.arch.elf_machine()),
            e_version: U32::new(e, u32::from(elf::EV_CURRENT)),
            e_entry: U64::new(e, 0),
            e_phoff: U64::new(e, header_size),
            e_shoff: U64::new(e, 0),
            e_flags: U32::new(e, 0),
            e_ehsize: U16::new(e, header_size as u16),
            e_phentsize: U16::new(e, entry as u16),
            e_phnum: U16::new(e, count as u16),
            e_shentsize: U16::new(e, 0),
            e_shnum: U16::new(e, 0),
            e_shstrndx: U16::new(e, 0),
        };
        let phdr = |p_type, offset, vaddr, paddr, size, align| elf::ProgramHeader64::<Endianness> {
            p_type: U32::new(e, p_type),
            p_flags: U32::new(e, elf::PF_R | elf::PF_W | elf::PF_X),
            p_offset: U64::new(e, offset),
            p_vaddr: U64::new(e, vaddr),
            p_paddr: U64::new(e, paddr),
            p_filesz: U64::new(e, size),
            p_memsz: U64::new(e, size),
            p_align: U64::new(e, align),
        };
        let mut head = object::pod::bytes_of(&header).to_vec();
        head.extend_from_slice(object::pod::bytes_of(&phdr(
            elf::PT_NOTE,
            notes_offset,
            0,
            0,
            notes.len() as u64,
            0,
        )));
        for (s, &offset) in self.segments.iter().zip(&offsets) {
            let ph = phdr(elf::PT_LOAD, offset, s.vaddr, s.paddr, s.size, PAGE_SIZE);
            head.extend_from_slice(object::pod::bytes_of(&ph));
        }
        head.extend_from_slice(&notes);

        let mut file = File::create(path)?;
        file.write_all(&head)?;
        for (s, &offset) in self.segments.iter().zip(&offsets) {
            write_content(&mut file, offset, s.size, &s.content)?;
        }
        file.set_len(length)?;
        Ok(offsets)
    }
}

fn align(offset: u64) -> u64 {
    offset.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE)
}

fn push_note(out: &mut Vec<u8>, name: &[u8], n_type: u32, desc: &[u8]) {
    let pad = |out: &mut Vec<u8>| out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&n_type.to_le_bytes());
    out.extend_from_slice(name);
    out.push(0);
    pad(out);
    out.extend_from_slice(desc);
    pad(out);
}

fn write_content(file: &mut File, offset: u64, size: u64, content: &Content) -> io::Result<()> {
    match content {
        Content::Absent | Content::Zeros => Ok(()),
        Content::Fill(byte) => write_with(file, offset, size, |_| *byte),
        Content::Pattern { phys } => write_with(file, offset, size, |i| pattern_byte(phys + i)),
        Content::PatternPages { phys, pages } => {
            for &page in pages {
                let at = page * PAGE_SIZE;
                let len = PAGE_SIZE.min(size.saturating_sub(at));
                write_with(file, offset + at, len, |i| pattern_byte(phys + at + i))?;
            }
            Ok(())
        }
        Content::Bytes(bytes) => {
            let len = (bytes.len() as u64).min(size) as usize;
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(&bytes[..len])
        }
    }
}

/// Writes `byte(i)` for i in 0..len at `offset`, a MiB at a time.
fn write_with(file: &mut File, offset: u64, len: u64, byte: impl Fn(u64) -> u8) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    let mut done = 0;
    while done < len {
        let n = (len - done).min(1 << 20);
        let chunk: Vec<u8> = (done..done + n).map(&byte).collect();
        file.write_all(&chunk)?;
        done += n;
    }
    Ok(())
}

/// Kernel-style iomem text for these RAM ranges (sorted, disjoint): gaps
/// are "Reserved", and a RAM range of 64 MiB or more gets "Kernel code" and
/// "Kernel rodata" children at +16 MiB, like a real kernel image.
pub fn iomem_text(ram: &[Range]) -> String {
    let mut text = String::new();
    let mut line = |depth: usize, r: Range, name: &str| {
        text.push_str(&format!(
            "{:indent$}{:08x}-{:08x} : {name}\n",
            "",
            r.start,
            r.last(),
            indent = depth * 2
        ));
    };
    let mut cursor = 0;
    for r in ram {
        if let Some(gap) = Range::new(cursor, r.start) {
            line(0, gap, "Reserved");
        }
        line(0, *r, "System RAM");
        if r.len() >= 64 << 20 {
            let code = r.start + (16 << 20);
            line(
                1,
                Range {
                    start: code,
                    end: code + 0x100_2407,
                },
                "Kernel code",
            );
            line(
                1,
                Range {
                    start: code + 0x120_0000,
                    end: code + 0x1c4_b000,
                },
                "Kernel rodata",
            );
        }
        cursor = r.end;
    }
    text
}

/// A stand-in for /dev/mem or /dev/crash: the pattern at file offset =
/// physical address over each RAM range, holes elsewhere.
pub fn write_physical_file(path: &Path, ram: &[Range]) -> io::Result<()> {
    let mut file = File::create(path)?;
    for r in ram {
        write_with(&mut file, r.start, r.len(), |i| pattern_byte(r.start + i))?;
    }
    file.set_len(ram.iter().map(|r| r.end).max().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{iomem, kcore};

    #[test]
    fn pattern_is_nonzero_and_varies() {
        let bytes = pattern(0, 1 << 16);
        assert!(bytes.iter().all(|&b| b != 0));
        let repeats = bytes.windows(2).filter(|w| w[0] == w[1]).count();
        assert!(repeats < bytes.len() / 256, "{repeats}");
        assert_ne!(pattern(0x1000, 64), pattern(0x2000, 64));
    }

    #[test]
    fn builder_output_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kcore");
        let builder = KcoreBuilder::new(Arch::Aarch64)
            .vmcoreinfo(b"PAGESIZE=4096\n")
            .segment(Segment::not_ram(0xffff_8000_0000_0000, 1 << 40))
            .segment(
                Segment::ram(0x4000_0000, 1 << 30).with_content(Content::PatternPages {
                    phys: 0x4000_0000,
                    pages: vec![0, 100],
                }),
            );
        let offsets = builder.write(&path).unwrap();
        let file = File::open(&path).unwrap();
        // The 1 TiB segment is past the end; the 1 GiB one costs two pages.
        assert_eq!(file.metadata().unwrap().len(), offsets[1] + (1 << 30));
        assert!(offsets[1] < offsets[0]);
        let header = kcore::parse(&file).unwrap();
        assert_eq!(header.arch, Arch::Aarch64);
        assert_eq!(header.vmcoreinfo.as_deref(), Some(&b"PAGESIZE=4096\n"[..]));
        assert_eq!(header.segments.len(), 2);
        assert_eq!(header.segments[0].paddr, NO_PADDR);
        assert_eq!(header.segments[1].offset, offsets[1]);
        let ram = [Range::new(0x4000_0000, 0x8000_0000).unwrap()];
        let parsed = iomem::parse(&iomem_text(&ram)).unwrap();
        assert_eq!(parsed.system_ram().ranges(), &ram);
        assert_eq!(parsed.find("Kernel code").len(), 1);
    }
}
