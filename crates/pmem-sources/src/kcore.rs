//! /proc/kcore: its ELF program headers, and where each physical address
//! lives in the file.
//!
//! kcore is an ELF core file as large as the kernel's address space and
//! almost entirely sparse, so only the ELF header, the program header table
//! and the PT_NOTE contents are read, never the whole file. Platform-neutral:
//! it parses anything implementing [`ReadAt`], including a copied header.

use crate::reader::{read_full, ReadAt};
use object::elf;
use object::read::elf::{FileHeader, NoteIterator, ProgramHeader};
use object::Endianness;
use pmem_core::{Arch, FileMap, FilePiece, MemoryMap, Range, PAGE_SIZE};
use std::io;

/// p_paddr of segments that are not RAM (vmalloc, vmemmap, modules) on
/// kernels >= 4.11.
pub const NO_PADDR: u64 = u64::MAX;

/// Refuse PT_NOTE segments larger than this: kcore's notes (prstatus,
/// prpsinfo, task_struct, VMCOREINFO) take a few KiB.
pub const MAX_NOTE_SIZE: u64 = 16 << 20;

/// What kcore's headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KcoreHeader {
    /// From e_machine.
    pub arch: Arch,
    /// PT_LOAD segments in file order.
    pub segments: Vec<LoadSegment>,
    /// Descriptor of the first note named "VMCOREINFO" (kernels >= 4.19).
    pub vmcoreinfo: Option<Vec<u8>>,
}

/// One PT_LOAD program header of kcore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// Kernel virtual address of the segment's first byte (p_vaddr).
    pub vaddr: u64,
    /// [`NO_PADDR`] for non-RAM segments; 0 for all segments before 4.11.
    pub paddr: u64,
    /// File offset (p_offset).
    pub offset: u64,
    /// Bytes in the file (p_filesz).
    pub size: u64,
}

/// How physical addresses were assigned to segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingMethod {
    /// From p_paddr (kernels >= 4.11).
    PhysicalAddresses,
    /// p_paddr was 0 everywhere (older kernels): the direct-map offset was
    /// inferred by matching segment sizes against System RAM ranges.
    DirectMapMatch,
}

/// Where kcore holds each byte of physical memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KcoreMapping {
    /// Which file offset holds each physical byte that a RAM segment gives.
    pub file_map: FileMap,
    /// Kernel virtual address of physical 0 in the direct map.
    pub direct_map_offset: Option<u64>,
    /// How the physical addresses were found.
    pub method: MappingMethod,
}

/// Why a kcore file can't be read as the kernel's ELF core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KcoreError {
    /// A read of the file failed or came up short.
    #[error("reading the {what} at offset {offset:#x}: {source}")]
    Io {
        /// What was being read, e.g. "ELF header".
        what: &'static str,
        /// Its file offset (bytes).
        offset: u64,
        /// The read's error.
        source: io::Error,
    },
    /// The file does not start with ELF's magic.
    #[error("not an ELF file (bad magic)")]
    NotElf,
    /// An ELF file, but not a core file the kernel would write.
    #[error("malformed ELF core: {0}")]
    Malformed(String),
    /// The note segment is larger than pmem reads (an untrusted size).
    #[error("PT_NOTE segment of {size} bytes is larger than the {MAX_NOTE_SIZE}-byte limit")]
    NoteTooLarge {
        /// The segment's size (bytes).
        size: u64,
    },
    /// A pre-4.11 kernel's segments match no System RAM range.
    #[error("no PT_LOAD segment matches a System RAM range, so the kernel's direct map can't be located (p_paddr is 0 on this pre-4.11 kernel)")]
    NoDirectMap,
    /// A pre-4.11 kernel's segments match System RAM at several offsets.
    #[error("segments match System RAM at {candidates} different direct-map offsets equally well; refusing to guess")]
    AmbiguousDirectMap {
        /// How many offsets matched equally well.
        candidates: usize,
    },
}

fn read_exact<R: ReadAt + ?Sized>(
    file: &R,
    buf: &mut [u8],
    offset: u64,
    what: &'static str,
) -> Result<(), KcoreError> {
    read_full(file, buf, offset).map_err(|(_, source)| KcoreError::Io {
        what,
        offset,
        source,
    })
}

/// Reads kcore's ELF header, program headers and notes.
pub fn parse<R: ReadAt + ?Sized>(file: &R) -> Result<KcoreHeader, KcoreError> {
    let mut ident = [0u8; 16];
    read_exact(file, &mut ident, 0, "ELF header")?;
    if ident[..4] != elf::ELFMAG {
        return Err(KcoreError::NotElf);
    }
    // e_ident[EI_CLASS]
    match ident[4] {
        elf::ELFCLASS64 => parse_class::<elf::FileHeader64<Endianness>, R>(file),
        elf::ELFCLASS32 => parse_class::<elf::FileHeader32<Endianness>, R>(file),
        class => Err(KcoreError::Malformed(format!("unknown ELF class {class}"))),
    }
}

fn parse_class<Elf, R>(file: &R) -> Result<KcoreHeader, KcoreError>
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadAt + ?Sized,
{
    let malformed =
        |what: &str, e: object::read::Error| KcoreError::Malformed(format!("{what}: {e}"));
    let mut header = vec![0u8; size_of::<Elf>()];
    read_exact(file, &mut header, 0, "ELF header")?;
    let header = Elf::parse(header.as_slice()).map_err(|e| malformed("ELF header", e))?;
    let endian = header.endian().map_err(|e| malformed("ELF header", e))?;
    if header.e_type(endian) != elf::ET_CORE {
        return Err(KcoreError::Malformed(format!(
            "e_type is {}, not ET_CORE",
            header.e_type(endian)
        )));
    }
    let count = header.e_phnum(endian);
    if count == elf::PN_XNUM {
        // kcore never has 65535 segments; the extended count would need the
        // section table, which kcore lacks.
        return Err(KcoreError::Malformed(
            "extended program header numbering is not supported".into(),
        ));
    }
    let entry = size_of::<Elf::ProgramHeader>();
    if count > 0 && usize::from(header.e_phentsize(endian)) != entry {
        return Err(KcoreError::Malformed(format!(
            "e_phentsize is {}, expected {entry}",
            header.e_phentsize(endian)
        )));
    }
    let mut table = vec![0u8; usize::from(count) * entry];
    read_exact(
        file,
        &mut table,
        header.e_phoff(endian).into(),
        "program header table",
    )?;
    let phdrs: &[Elf::ProgramHeader] = object::pod::slice_from_all_bytes(&table)
        .map_err(|()| KcoreError::Malformed("program header table".into()))?;
    let is_64 = header.is_class_64();
    let mut segments = Vec::new();
    let mut vmcoreinfo = None;
    for ph in phdrs {
        match ph.p_type(endian) {
            elf::PT_LOAD => {
                let mut paddr: u64 = ph.p_paddr(endian).into();
                // A 32-bit kcore writes -1 in 32 bits.
                if !is_64 && paddr == u64::from(u32::MAX) {
                    paddr = NO_PADDR;
                }
                segments.push(LoadSegment {
                    vaddr: ph.p_vaddr(endian).into(),
                    paddr,
                    offset: ph.p_offset(endian).into(),
                    size: ph.p_filesz(endian).into(),
                });
            }
            elf::PT_NOTE if vmcoreinfo.is_none() => {
                vmcoreinfo = find_vmcoreinfo::<Elf, R>(file, endian, ph)?;
            }
            _ => {}
        }
    }
    Ok(KcoreHeader {
        arch: Arch::from_elf_machine(header.e_machine(endian)),
        segments,
        vmcoreinfo,
    })
}

fn find_vmcoreinfo<Elf, R>(
    file: &R,
    endian: Endianness,
    ph: &Elf::ProgramHeader,
) -> Result<Option<Vec<u8>>, KcoreError>
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadAt + ?Sized,
{
    let size: u64 = ph.p_filesz(endian).into();
    if size > MAX_NOTE_SIZE {
        return Err(KcoreError::NoteTooLarge { size });
    }
    let mut data = vec![0u8; size as usize];
    read_exact(
        file,
        &mut data,
        ph.p_offset(endian).into(),
        "PT_NOTE segment",
    )?;
    let malformed = |e: object::read::Error| KcoreError::Malformed(format!("PT_NOTE: {e}"));
    // kcore leaves the note's p_align at 0; anything but 8 means the
    // standard 4-byte note alignment (Word::default() is 0, read as 4).
    let align = match ph.p_align(endian).into() {
        8u64 => ph.p_align(endian),
        _ => Default::default(),
    };
    let mut notes = NoteIterator::<Elf>::new(endian, align, &data).map_err(malformed)?;
    while let Some(note) = notes.next().map_err(malformed)? {
        if note.name() == b"VMCOREINFO" {
            return Ok(Some(note.desc().to_vec()));
        }
    }
    Ok(None)
}

/// Assigns physical addresses to kcore's segments.
///
/// Kernels >= 4.11 write the physical address of RAM segments in p_paddr
/// (and of the kernel text segment, which lies inside RAM again) and -1 for
/// the rest. The direct-map segments all share one offset p_vaddr - p_paddr;
/// the offset that covers the most System RAM is the direct map, its
/// segments win where others (kernel text) cover the same physical pages.
///
/// Older kernels write p_paddr = 0 everywhere. Their kcore has one segment
/// per System RAM range, placed at direct-map offset + the range's start
/// rounded up to a page, sized to the range's whole pages. Every pair of a
/// page-clipped RAM range and a segment of exactly its size votes for the
/// offset `vaddr - start`; the offset with most votes (then most bytes)
/// wins, and a tie between different offsets is an error rather than a
/// guess. With that offset, a segment is used only if its physical span
/// lies inside one System RAM range, which keeps vmalloc, vmemmap and
/// kernel text segments out.
pub fn map_physical(
    segments: &[LoadSegment],
    system_ram: &MemoryMap,
) -> Result<KcoreMapping, KcoreError> {
    // Segments whose file or physical span would overflow can't be read.
    let usable = segments
        .iter()
        .filter(|s| s.size > 0 && s.offset.checked_add(s.size).is_some());
    let old_kernel = !segments.is_empty() && segments.iter().all(|s| s.paddr == 0);
    let (chosen, direct_map_offset, method): (Vec<(LoadSegment, u64)>, _, _) = if old_kernel {
        let offset = match_direct_map(segments, system_ram)?;
        let ram_pages: Vec<Range> = system_ram.ranges().iter().map(round_out).collect();
        let chosen = usable
            .filter_map(|s| {
                let phys = s.vaddr.wrapping_sub(offset);
                let span = Range::new(phys, phys.checked_add(s.size)?)?;
                ram_pages
                    .iter()
                    .any(|r| r.start <= span.start && span.end <= r.end)
                    .then_some((*s, phys))
            })
            .collect();
        (chosen, Some(offset), MappingMethod::DirectMapMatch)
    } else {
        let candidates: Vec<(LoadSegment, u64)> = usable
            .filter(|s| s.paddr != NO_PADDR && s.paddr.checked_add(s.size).is_some())
            .map(|s| (*s, s.paddr))
            .collect();
        let offset = dominant_offset(&candidates, system_ram);
        // Direct-map segments first, then the rest in file order.
        let (mut chosen, rest): (Vec<_>, Vec<_>) = candidates
            .into_iter()
            .partition(|(s, phys)| Some(s.vaddr.wrapping_sub(*phys)) == offset);
        chosen.extend(rest);
        (chosen, offset, MappingMethod::PhysicalAddresses)
    };
    Ok(KcoreMapping {
        file_map: assign(&chosen, system_ram)?,
        direct_map_offset,
        method,
    })
}

fn round_out(r: &Range) -> Range {
    let start = r.start & !(PAGE_SIZE - 1);
    let end = r.end.checked_next_multiple_of(PAGE_SIZE).unwrap_or(r.end);
    Range { start, end }
}

fn ram_bytes(span: Range, ram: &MemoryMap) -> u64 {
    MemoryMap::new(vec![span])
        .map(|m| m.intersect(ram).total_bytes())
        .unwrap_or(0)
}

/// The offset vaddr - paddr under which segments cover the most System RAM,
/// if one covers strictly more than any other.
fn dominant_offset(candidates: &[(LoadSegment, u64)], ram: &MemoryMap) -> Option<u64> {
    let mut weights: Vec<(u64, u64)> = Vec::new();
    for (s, phys) in candidates {
        let Some(span) = Range::new(*phys, phys.saturating_add(s.size)) else {
            continue;
        };
        let bytes = ram_bytes(span, ram);
        let offset = s.vaddr.wrapping_sub(*phys);
        match weights.iter_mut().find(|(o, _)| *o == offset) {
            // Saturating: repeated segments of a corrupt kcore can claim
            // more than 2^64 bytes together; ranking needs no more.
            Some((_, total)) => *total = total.saturating_add(bytes),
            None => weights.push((offset, bytes)),
        }
    }
    weights.sort_by_key(|&(_, bytes)| std::cmp::Reverse(bytes));
    match weights.as_slice() {
        [(offset, bytes), rest @ ..] if *bytes > 0 && rest.first().is_none_or(|r| r.1 < *bytes) => {
            Some(*offset)
        }
        _ => None,
    }
}

/// Old kernels: the direct-map offset by voting, see [`map_physical`].
fn match_direct_map(segments: &[LoadSegment], ram: &MemoryMap) -> Result<u64, KcoreError> {
    // (offset, matched ranges, matched bytes)
    let mut votes: Vec<(u64, u64, u64)> = Vec::new();
    for r in ram
        .ranges()
        .iter()
        .filter_map(|r| r.shrink_to_alignment(PAGE_SIZE))
    {
        for s in segments.iter().filter(|s| s.size == r.len()) {
            let offset = s.vaddr.wrapping_sub(r.start);
            match votes.iter_mut().find(|(o, _, _)| *o == offset) {
                Some(v) => {
                    v.1 += 1;
                    // Saturating, as in dominant_offset.
                    v.2 = v.2.saturating_add(r.len());
                }
                None => votes.push((offset, 1, r.len())),
            }
        }
    }
    votes.sort_by_key(|&(_, count, bytes)| std::cmp::Reverse((count, bytes)));
    match votes.as_slice() {
        [] => Err(KcoreError::NoDirectMap),
        [best, second, ..] if (second.1, second.2) == (best.1, best.2) => {
            Err(KcoreError::AmbiguousDirectMap {
                candidates: votes
                    .iter()
                    .filter(|v| (v.1, v.2) == (best.1, best.2))
                    .count(),
            })
        }
        [best, ..] => Ok(best.0),
    }
}

/// Turns segments (in priority order) into disjoint pieces: each physical
/// byte comes from the first segment covering it. Segments that touch no
/// RAM are left out, which also keeps the work small on kcores with many
/// vmemmap segments.
fn assign(chosen: &[(LoadSegment, u64)], ram: &MemoryMap) -> Result<FileMap, KcoreError> {
    let mut pieces = Vec::new();
    let mut covered = MemoryMap::default();
    for (s, phys) in chosen {
        let Some(span) = phys
            .checked_add(s.size)
            .and_then(|end| Range::new(*phys, end))
        else {
            continue;
        };
        if ram_bytes(span, ram) == 0 {
            continue;
        }
        let Ok(span_map) = MemoryMap::new(vec![span]) else {
            continue;
        };
        for part in span_map.subtract(&covered).ranges() {
            pieces.push(FilePiece {
                phys: *part,
                file_offset: s.offset + (part.start - phys),
            });
        }
        let mut all = covered.ranges().to_vec();
        all.push(span);
        covered = MemoryMap::normalized(all);
    }
    pieces.sort_by_key(|p| p.phys.start);
    // Disjoint by construction, and every file run lies inside a segment
    // whose end was checked above: FileMap's checks can't fail here, but a
    // corrupt kcore is refused rather than trusted if they ever did.
    FileMap::new(pieces).map_err(|e| KcoreError::Malformed(format!("segment table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIRECT: u64 = 0xffff_8880_0000_0000;
    const MIB: u64 = 1 << 20;

    fn r(start: u64, end: u64) -> Range {
        Range::new(start, end).unwrap()
    }

    fn seg(vaddr: u64, paddr: u64, offset: u64, size: u64) -> LoadSegment {
        LoadSegment {
            vaddr,
            paddr,
            offset,
            size,
        }
    }

    /// Each piece's physical range and file offset.
    fn pieces(m: &KcoreMapping) -> Vec<(Range, u64)> {
        m.file_map
            .pieces()
            .iter()
            .map(|p| (p.phys, p.file_offset))
            .collect()
    }

    fn ram(ranges: &[(u64, u64)]) -> MemoryMap {
        MemoryMap::new(ranges.iter().map(|&(s, e)| r(s, e)).collect()).unwrap()
    }

    #[test]
    fn modern_direct_map_wins_over_text() {
        let ram = ram(&[(0x1000, 0x9fc00), (MIB, 512 * MIB)]);
        let segments = [
            // text: physical 16 MiB.. under another offset, listed first.
            seg(0xffff_ffff_8100_0000, 16 * MIB, 0x7000_0000_0000, 32 * MIB),
            seg(0xffff_c900_0000_0000, NO_PADDR, 0x4000_0000_0000, 1 << 40),
            seg(DIRECT + 0x1000, 0x1000, 0x2000, 0x9e000),
            seg(DIRECT + MIB, MIB, 0x10_0000, 511 * MIB),
        ];
        let m = map_physical(&segments, &ram).unwrap();
        assert_eq!(m.method, MappingMethod::PhysicalAddresses);
        assert_eq!(m.direct_map_offset, Some(DIRECT));
        assert_eq!(
            pieces(&m),
            [(r(0x1000, 0x9f000), 0x2000), (r(MIB, 512 * MIB), 0x10_0000)]
        );
    }

    #[test]
    fn text_fills_gaps_the_direct_map_leaves() {
        let ram = ram(&[(MIB, 64 * MIB)]);
        let segments = [
            seg(0xffff_ffff_8100_0000, 16 * MIB, 0x9000_0000, 16 * MIB),
            seg(DIRECT + MIB, MIB, 0, 20 * MIB),
            seg(DIRECT + 30 * MIB, 30 * MIB, 0x4000_0000, 34 * MIB),
        ];
        let m = map_physical(&segments, &ram).unwrap();
        assert_eq!(m.direct_map_offset, Some(DIRECT));
        assert_eq!(
            pieces(&m),
            [
                (r(MIB, 21 * MIB), 0),
                (r(21 * MIB, 30 * MIB), 0x9000_0000 + 5 * MIB),
                (r(30 * MIB, 64 * MIB), 0x4000_0000),
            ]
        );
    }

    #[test]
    fn old_kernel_matching() {
        let ram = ram(&[(0x1000, 0x9fc00), (MIB, 0x7ffdd000)]);
        let segments = [
            seg(0xffff_ffff_8100_0000, 0, 0x7000_0000, 0x9e000), // text, size of RAM range 1
            seg(0xffff_c900_0000_0000, 0, 0x1000_0000_0000, 1 << 45),
            seg(DIRECT + 0x1000, 0, 0x2000, 0x9e000),
            seg(DIRECT + MIB, 0, 0x20_0000, 0x7ffdd000 - MIB),
            seg(0xffff_ea00_0000_0000, 0, 0x2000_0000_0000, 1 << 30),
        ];
        let m = map_physical(&segments, &ram).unwrap();
        assert_eq!(m.method, MappingMethod::DirectMapMatch);
        assert_eq!(m.direct_map_offset, Some(DIRECT));
        assert_eq!(
            pieces(&m),
            [
                (r(0x1000, 0x9f000), 0x2000),
                (r(MIB, 0x7ffdd000), 0x20_0000)
            ]
        );
    }

    #[test]
    fn old_kernel_split_segments_are_used() {
        // Two segments for one RAM range: the first matches nothing by size
        // but both lie inside RAM under the offset the other ranges vote for.
        let ram = ram(&[(0x1000, 0x9f000), (MIB, 128 * MIB)]);
        let segments = [
            seg(DIRECT + 0x1000, 0, 0x1000, 0x9e000),
            seg(DIRECT + MIB, 0, 0x10_0000, 63 * MIB),
            seg(DIRECT + 64 * MIB, 0, 0x900_0000, 64 * MIB),
        ];
        let m = map_physical(&segments, &ram).unwrap();
        assert_eq!(m.direct_map_offset, Some(DIRECT));
        assert_eq!(m.file_map.pieces().len(), 3);
        assert_eq!(m.file_map.pieces()[2].phys, r(64 * MIB, 128 * MIB));
    }

    #[test]
    fn old_kernel_failures() {
        let ram = ram(&[(MIB, 64 * MIB)]);
        assert!(matches!(
            map_physical(&[seg(DIRECT, 0, 0, 4096)], &ram),
            Err(KcoreError::NoDirectMap)
        ));
        // Text happens to have the RAM range's size: two offsets, one vote each.
        let segments = [
            seg(0xffff_ffff_8100_0000, 0, 0, 63 * MIB),
            seg(DIRECT + MIB, 0, 0x1000_0000, 63 * MIB),
        ];
        assert!(matches!(
            map_physical(&segments, &ram),
            Err(KcoreError::AmbiguousDirectMap { candidates: 2 })
        ));
    }

    #[test]
    fn garbage_segments_do_not_panic() {
        let ram = ram(&[(0, u64::MAX)]);
        let segments = [
            seg(u64::MAX, u64::MAX - 1, u64::MAX, 10),
            seg(0, 5, u64::MAX - 2, 2),
            seg(7, u64::MAX - 3, 0, 100),
            seg(0, 0, 0, 0),
        ];
        let m = map_physical(&segments, &ram).unwrap();
        assert_eq!(m.file_map.pieces().len(), 1);
        assert!(map_physical(&[], &ram)
            .unwrap()
            .file_map
            .pieces()
            .is_empty());
    }

    /// A kcore header from the testing builder, in memory.
    fn built(builder: &crate::testing::KcoreBuilder) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kcore");
        builder.write(&path).unwrap();
        let mut bytes = std::fs::read(path).unwrap();
        bytes.truncate(4096);
        bytes
    }

    fn sample() -> crate::testing::KcoreBuilder {
        use crate::testing::{KcoreBuilder, Segment};
        KcoreBuilder::new(Arch::X86_64)
            .vmcoreinfo(b"OSRELEASE=6.8.0\n")
            .segment(Segment::not_ram(0xffff_ffff_8100_0000, 0x1000).with_paddr(0x1000))
            .segment(Segment::not_ram(0xffff_c900_0000_0000, 1 << 45))
            .segment(Segment::ram(0x1000, 0x2000).with_content(crate::testing::Content::Zeros))
    }

    #[test]
    fn parses_builder_output() {
        let header = parse(&built(&sample())).unwrap();
        assert_eq!(header.arch, Arch::X86_64);
        assert_eq!(
            header.vmcoreinfo.as_deref(),
            Some(&b"OSRELEASE=6.8.0\n"[..])
        );
        let paddrs: Vec<u64> = header.segments.iter().map(|s| s.paddr).collect();
        assert_eq!(paddrs, [0x1000, NO_PADDR, 0x1000]);
        assert_eq!(header.segments[1].size, 1 << 45);
    }

    #[test]
    fn note_size_is_bounded() {
        let mut bytes = built(&sample());
        // p_filesz of the PT_NOTE header, the first one at offset 64.
        bytes[64 + 32..64 + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            parse(&bytes),
            Err(KcoreError::NoteTooLarge { size }) if size == 1 << 40
        ));
    }

    #[test]
    fn bad_program_header_tables() {
        let bytes = built(&sample());
        let mut wrong_size = bytes.clone();
        wrong_size[54] = 32; // e_phentsize
        assert!(matches!(parse(&wrong_size), Err(KcoreError::Malformed(_))));
        let mut too_many = bytes.clone();
        too_many[56..58].copy_from_slice(&100u16.to_le_bytes()); // e_phnum
        assert!(matches!(
            parse(&too_many[..600]),
            Err(KcoreError::Io { .. })
        ));
        let mut not_core = bytes.clone();
        not_core[16] = 2; // ET_EXEC
        assert!(matches!(parse(&not_core), Err(KcoreError::Malformed(_))));
    }

    #[test]
    fn elf32_kcore() {
        use object::{U16, U32};
        let e = Endianness::Little;
        let header = elf::FileHeader32::<Endianness> {
            e_ident: elf::Ident {
                magic: elf::ELFMAG,
                class: elf::ELFCLASS32,
                data: elf::ELFDATA2LSB,
                version: elf::EV_CURRENT,
                os_abi: 0,
                abi_version: 0,
                padding: [0; 7],
            },
            e_type: U16::new(e, elf::ET_CORE),
            e_machine: U16::new(e, elf::EM_386),
            e_version: U32::new(e, 1),
            e_entry: U32::new(e, 0),
            e_phoff: U32::new(e, 52),
            e_shoff: U32::new(e, 0),
            e_flags: U32::new(e, 0),
            e_ehsize: U16::new(e, 52),
            e_phentsize: U16::new(e, 32),
            e_phnum: U16::new(e, 2),
            e_shentsize: U16::new(e, 0),
            e_shnum: U16::new(e, 0),
            e_shstrndx: U16::new(e, 0),
        };
        let load = |vaddr: u32, paddr: u32| elf::ProgramHeader32::<Endianness> {
            p_type: U32::new(e, elf::PT_LOAD),
            p_offset: U32::new(e, 0x1000),
            p_vaddr: U32::new(e, vaddr),
            p_paddr: U32::new(e, paddr),
            p_filesz: U32::new(e, 0x1000),
            p_memsz: U32::new(e, 0x1000),
            p_flags: U32::new(e, 7),
            p_align: U32::new(e, 0x1000),
        };
        let mut bytes = object::pod::bytes_of(&header).to_vec();
        bytes.extend_from_slice(object::pod::bytes_of(&load(0xc010_0000, 0x10_0000)));
        bytes.extend_from_slice(object::pod::bytes_of(&load(0xf800_0000, u32::MAX)));
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.arch, Arch::X86);
        assert_eq!(parsed.segments[0].paddr, 0x10_0000);
        assert_eq!(parsed.segments[1].paddr, NO_PADDR);
    }

    /// Mutated headers: errors are fine, panics are not.
    #[test]
    fn mutations_never_panic() {
        let original = built(&sample());
        let ram = MemoryMap::new(vec![r(0x1000, 0x9fc00), r(MIB, 64 * MIB)]).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 8 {
                // Mostly the ELF and program headers, sometimes the notes.
                let at = (next() % 600) as usize;
                bytes[at] = next() as u8;
            }
            if next() % 10 == 0 {
                bytes.truncate((next() % 600) as usize);
            }
            if let Ok(header) = parse(&bytes) {
                let _ = map_physical(&header.segments, &ram);
            }
        }
    }

    #[test]
    fn rejects_non_elf_and_truncated() {
        assert!(matches!(
            parse(&b"hello world, not elf"[..]),
            Err(KcoreError::NotElf)
        ));
        assert!(matches!(parse(&b"\x7fELF"[..]), Err(KcoreError::Io { .. })));
        let mut header = b"\x7fELF\x03\x01\x01".to_vec();
        header.resize(64, 0);
        assert!(matches!(parse(&header), Err(KcoreError::Malformed(_))));
    }
}

#[cfg(test)]
mod overflow_tests {
    use super::*;

    const HALF: u64 = 1 << 63;

    fn seg(vaddr: u64, paddr: u64, size: u64) -> LoadSegment {
        LoadSegment {
            vaddr,
            paddr,
            offset: 0,
            size,
        }
    }

    /// Byte counts summed over segments read from kcore stay in range
    /// however many segments repeat one huge range (a hostile or corrupt
    /// copy of kcore's headers, with an iomem listing to match).
    #[test]
    fn votes_and_weights_do_not_overflow() {
        let ram = MemoryMap::new(vec![Range::new(0, HALF).unwrap()]).unwrap();
        // Pre-4.11 (p_paddr 0): two segments of the RAM range's size vote
        // for one offset with 2^63 bytes each.
        let old = [seg(0x1000, 0, HALF), seg(0x1000, 0, HALF)];
        let mapping = map_physical(&old, &ram).unwrap();
        assert_eq!(mapping.direct_map_offset, Some(0x1000));
        // p_paddr set (a vmalloc segment with -1 tells): two segments at
        // one offset weigh 2^63 bytes each.
        let new = [
            seg(HALF, 0, HALF),
            seg(HALF, 0, HALF),
            seg(0x1000, NO_PADDR, 0x1000),
        ];
        let mapping = map_physical(&new, &ram).unwrap();
        assert_eq!(mapping.direct_map_offset, Some(HALF));
        assert_eq!(mapping.file_map.pieces().len(), 1);
    }
}
