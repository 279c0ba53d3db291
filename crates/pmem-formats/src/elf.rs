//! ELF64 little-endian core files (`ET_CORE`), as Volatility, crash, gdb and
//! drgn read them.
//!
//! Layout written: ELF header, program headers, notes, then the data of each
//! range at a page-aligned file offset. The program headers are a `PT_NOTE`
//! (only when there is a note to carry) holding a VMCOREINFO note, a `PMEM`
//! note with the acquisition metadata JSON and a `PMEM` note with the symbol
//! bundle, then one `PT_LOAD` per range in ascending `p_paddr` order with
//! `p_filesz == p_memsz`.
//!
//! The image is shaped like a kdump vmcore (/proc/vmcore, makedumpfile's
//! ELF output, QEMU's dump-guest-memory), which is what crash and drgn know:
//! * `p_align` of every `PT_LOAD` is 0. crash tells a kdump vmcore from a
//!   netdump one by the first `PT_LOAD`'s `p_align` (0, or an unaligned
//!   `p_offset`), and only for kdump does it take the KASLR offset and
//!   `phys_base` from VMCOREINFO (`KERNELOFFSET`, `SYMBOL(_stext)`,
//!   `NUMBER(phys_base)`); as netdump it reads unrelocated addresses and
//!   stops at once. The data stays page-aligned in the file all the same.
//! * No `NT_PRSTATUS`: pmem has no CPU register state to give, and a live
//!   acquisition has no panicking task.
//! * The `PMEM` note's type is [`NT_PMEM_METADATA`], a number no core file
//!   reader knows. crash, gdb (BFD) and drgn go by `n_type` whatever the
//!   note's name, and took the type 1 of older images for `NT_PRSTATUS`
//!   (register state read from pmem's JSON). The symbol bundle's note is
//!   typed likewise, [`NT_PMEM_SYMBOLS`].
//!
//! 32-bit x86 plans are written as ELF64 with `EM_386`, as kexec-tools does
//! for PAE kernels: physical addresses above 4 GiB do not fit ELF32.

use crate::image_file::Parsing;
use crate::laid_out::{DataLayout, Trailer};
use crate::reader::{mapped_file_reader, MappedFile};
use crate::write::{plan_error, plan_symbols};
use crate::{Format, FormatError, ImageFile, ImageMetadata, LaidOutWriter};
use object::elf::{self as E, FileHeader64, NoteHeader64, ProgramHeader64};
use object::read::elf::{FileHeader as _, NoteIterator, ProgramHeader as _};
use object::{LittleEndian as LE, ReadCache, U16, U32, U64};
use pmem_core::{Arch, ByteSink, FileMap, FilePiece, Plan, Range, WriteError, PAGE_SIZE};
#[cfg(test)]
use std::fs::File;
use std::mem::size_of;
use std::path::Path;

/// Name of the kernel's VMCOREINFO note, as /proc/kcore and vmcore carry it.
pub const VMCOREINFO_NAME: &[u8] = b"VMCOREINFO";
/// Note type of the VMCOREINFO note: 0, as the kernel writes it (the
/// name, not the type, identifies it).
pub const NT_VMCOREINFO: u32 = 0;
/// Name of pmem's own note; its namespace makes the type number ours.
pub const PMEM_NAME: &[u8] = b"PMEM";
/// Type of the `PMEM` note whose descriptor is the metadata JSON (UTF-8):
/// the bytes "PMEM" read little-endian, as Linux names NT_FILE ("FILE") and
/// NT_SIGINFO ("SIGI"); no core note type is near it.
pub const NT_PMEM_METADATA: u32 = u32::from_le_bytes(*b"PMEM");
/// The type the metadata note had in older pmem images (until 2026-12):
/// 1, which is NT_PRSTATUS to every other reader. Still read.
pub const NT_PMEM_METADATA_OLD: u32 = 1;
/// Type of the `PMEM` note whose descriptor is the symbol bundle (opaque
/// bytes): the bytes "PSYM" read little-endian, named as
/// [`NT_PMEM_METADATA`] is.
pub const NT_PMEM_SYMBOLS: u32 = u32::from_le_bytes(*b"PSYM");
/// Type of the `PMEM` note whose descriptor is the time map (JSON, padded
/// with spaces to the room reserved before the copy): "PTIM"
/// little-endian. It is the only note of a second `PT_NOTE` segment, after
/// the last range's data, written once the copy is over.
pub const NT_PMEM_TIME_MAP: u32 = u32::from_le_bytes(*b"PTIM");
/// Largest `PT_NOTE` segment read (or written): notes are read whole into
/// memory. Real ones (VMCOREINFO, per-CPU status) are kilobytes; 16 MiB for
/// them, plus room for a symbol bundle of up to [`crate::MAX_SYMBOLS`].
pub const MAX_NOTE_SEGMENT: u64 = (16 << 20) + crate::MAX_SYMBOLS;

const EHDR_LEN: u64 = size_of::<FileHeader64<LE>>() as u64;
const PHDR_LEN: u64 = size_of::<ProgramHeader64<LE>>() as u64;
/// Alignment of note entries in a `PT_NOTE` (Linux core files use 4).
const NOTE_ALIGN: usize = 4;

/// A writer streaming an ELF core: the layout is fixed in `begin`, after
/// which bytes only ever go forward.
pub fn writer(sink: Box<dyn ByteSink>) -> LaidOutWriter {
    LaidOutWriter::new(Format::Elf, data_layout, sink).with_trailer(Trailer {
        len: time_map_note_len,
        bytes: time_map_note,
    })
}

/// Bytes of the time map's note (header, name, reserved descriptor) when
/// the plan asks for one, else 0.
fn time_map_note_len(plan: &Plan) -> u64 {
    let Some(room) = pmem_core::TimeMap::json_room(plan) else {
        return 0;
    };
    let desc = room.next_multiple_of(NOTE_ALIGN);
    12 + (PMEM_NAME.len() + 1).next_multiple_of(NOTE_ALIGN) as u64 + desc as u64
}

/// The time map's note of `len` bytes: the JSON padded with spaces (all
/// spaces when there is none, or when it would not fit: never, by
/// [`pmem_core::TimeMap::json_bound`]).
fn time_map_note(json: Option<&str>, len: u64) -> Vec<u8> {
    let name = (PMEM_NAME.len() + 1).next_multiple_of(NOTE_ALIGN);
    let room = len as usize - 12 - name;
    let mut desc = json
        .map(str::as_bytes)
        .filter(|j| j.len() <= room)
        .unwrap_or_default()
        .to_vec();
    desc.resize(room, b' ');
    let mut out = Vec::with_capacity(len as usize);
    // Cannot fail: the descriptor fits the room counted above.
    let _ = push_note(&mut out, PMEM_NAME, NT_PMEM_TIME_MAP, &desc);
    out
}

fn page_align(offset: u64) -> Option<u64> {
    Some(offset.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1))
}

/// Everything before the first segment's data (header, program headers,
/// notes) and the file offset of each range's data.
pub(crate) fn data_layout(plan: &Plan) -> Result<DataLayout<'_>, WriteError> {
    let notes = notes(plan)?;
    let trailer = time_map_note_len(plan);
    let note_phdrs = u64::from(!notes.is_empty()) + u64::from(trailer > 0);
    let phnum = note_phdrs + plan.ranges.len() as u64;
    let phnum = u16::try_from(phnum)
        .ok()
        .filter(|&n| n < E::PN_XNUM)
        .ok_or_else(|| {
            plan_error(format!(
                "{} ranges do not fit an ELF program header table (at most {})",
                plan.ranges.len(),
                E::PN_XNUM - 1 - note_phdrs as u16
            ))
        })?;
    let notes_offset = EHDR_LEN + u64::from(phnum) * PHDR_LEN;
    let mut next = notes_offset + notes.len();
    let mut offsets = Vec::with_capacity(plan.ranges.len());
    for range in &plan.ranges {
        let offset =
            page_align(next).ok_or_else(|| plan_error("the ELF image would exceed 2^64 bytes"))?;
        offsets.push(offset);
        next = offset
            .checked_add(range.len())
            .ok_or_else(|| plan_error("the ELF image would exceed 2^64 bytes"))?;
    }

    let mut head = Vec::with_capacity(notes_offset as usize + notes.bytes.len());
    head.extend_from_slice(object::bytes_of(&file_header(plan.arch, phnum)));
    if !notes.is_empty() {
        let note = ProgramHeader64 {
            p_type: U32::new(LE, E::PT_NOTE),
            p_flags: U32::new(LE, 0),
            p_offset: U64::new(LE, notes_offset),
            p_vaddr: U64::new(LE, 0),
            p_paddr: U64::new(LE, 0),
            p_filesz: U64::new(LE, notes.len()),
            p_memsz: U64::new(LE, notes.len()),
            p_align: U64::new(LE, NOTE_ALIGN as u64),
        };
        head.extend_from_slice(object::bytes_of(&note));
    }
    for (range, &offset) in plan.ranges.ranges().iter().zip(&offsets) {
        let vaddr = plan
            .direct_map_offset
            .map_or(0, |base| base.wrapping_add(range.start));
        let load = ProgramHeader64 {
            p_type: U32::new(LE, E::PT_LOAD),
            p_flags: U32::new(LE, E::PF_R | E::PF_W | E::PF_X),
            p_offset: U64::new(LE, offset),
            p_vaddr: U64::new(LE, vaddr),
            p_paddr: U64::new(LE, range.start),
            p_filesz: U64::new(LE, range.len()),
            p_memsz: U64::new(LE, range.len()),
            // 0 as in kdump vmcores: crash's test for one (module docs).
            p_align: U64::new(LE, 0),
        };
        head.extend_from_slice(object::bytes_of(&load));
    }
    if trailer > 0 {
        // After the last range's data, written when the copy is over.
        let note = ProgramHeader64 {
            p_type: U32::new(LE, E::PT_NOTE),
            p_flags: U32::new(LE, 0),
            p_offset: U64::new(LE, next.next_multiple_of(NOTE_ALIGN as u64)),
            p_vaddr: U64::new(LE, 0),
            p_paddr: U64::new(LE, 0),
            p_filesz: U64::new(LE, trailer),
            p_memsz: U64::new(LE, trailer),
            p_align: U64::new(LE, NOTE_ALIGN as u64),
        };
        head.extend_from_slice(object::bytes_of(&note));
    }
    head.extend_from_slice(&notes.bytes);
    Ok(DataLayout {
        head,
        symbols: notes.symbols,
        offsets,
    })
}

fn file_header(arch: Arch, phnum: u16) -> FileHeader64<LE> {
    FileHeader64 {
        e_ident: E::Ident {
            magic: E::ELFMAG,
            class: E::ELFCLASS64,
            data: E::ELFDATA2LSB,
            version: E::EV_CURRENT,
            os_abi: E::ELFOSABI_NONE,
            abi_version: 0,
            padding: [0; 7],
        },
        e_type: U16::new(LE, E::ET_CORE),
        e_machine: U16::new(LE, arch.elf_machine()),
        e_version: U32::new(LE, u32::from(E::EV_CURRENT)),
        e_entry: U64::new(LE, 0),
        e_phoff: U64::new(LE, if phnum == 0 { 0 } else { EHDR_LEN }),
        e_shoff: U64::new(LE, 0),
        e_flags: U32::new(LE, 0),
        e_ehsize: U16::new(LE, EHDR_LEN as u16),
        e_phentsize: U16::new(LE, PHDR_LEN as u16),
        e_phnum: U16::new(LE, phnum),
        e_shentsize: U16::new(LE, 0),
        e_shnum: U16::new(LE, 0),
        e_shstrndx: U16::new(LE, 0),
    }
}

/// The `PT_NOTE` contents: `bytes`, then the symbol bundle's descriptor
/// (`symbols`, borrowed from the plan: see [`DataLayout`]), then zeros to
/// [`NOTE_ALIGN`].
struct WrittenNotes<'p> {
    bytes: Vec<u8>,
    symbols: &'p [u8],
}

impl WrittenNotes<'_> {
    fn len(&self) -> u64 {
        (self.bytes.len() + self.symbols.len().next_multiple_of(NOTE_ALIGN)) as u64
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The notes: VMCOREINFO first (where crash and drgn look), then pmem's
/// metadata, then the symbol bundle (its note's header in `bytes`, its
/// descriptor left in the plan).
fn notes(plan: &Plan) -> Result<WrittenNotes<'_>, WriteError> {
    let mut bytes = Vec::new();
    if let Some(desc) = &plan.vmcoreinfo {
        push_note(&mut bytes, VMCOREINFO_NAME, NT_VMCOREINFO, desc)?;
    }
    if let Some(json) = &plan.metadata_json {
        push_note(&mut bytes, PMEM_NAME, NT_PMEM_METADATA, json.as_bytes())?;
    }
    let symbols = plan_symbols(plan)?;
    if let Some(symbols) = symbols {
        push_note_head(&mut bytes, PMEM_NAME, NT_PMEM_SYMBOLS, symbols.len())?;
    }
    let notes = WrittenNotes {
        bytes,
        symbols: symbols.unwrap_or_default(),
    };
    if notes.len() > MAX_NOTE_SEGMENT {
        // Readers (ours included) bound what they load from a PT_NOTE.
        return Err(plan_error(format!(
            "ELF notes of {} bytes exceed the {MAX_NOTE_SEGMENT}-byte limit",
            notes.len()
        )));
    }
    Ok(notes)
}

fn push_note(out: &mut Vec<u8>, name: &[u8], n_type: u32, desc: &[u8]) -> Result<(), WriteError> {
    push_note_head(out, name, n_type, desc.len())?;
    out.extend_from_slice(desc);
    out.resize(out.len().next_multiple_of(NOTE_ALIGN), 0);
    Ok(())
}

/// A note's header and name, up to where its `desc_len`-byte descriptor
/// starts.
fn push_note_head(
    out: &mut Vec<u8>,
    name: &[u8],
    n_type: u32,
    desc_len: usize,
) -> Result<(), WriteError> {
    let descsz = u32::try_from(desc_len)
        .map_err(|_| plan_error(format!("ELF note of {desc_len} bytes is too large")))?;
    let header = NoteHeader64 {
        n_namesz: U32::new(LE, name.len() as u32 + 1), // with its NUL
        n_descsz: U32::new(LE, descsz),
        n_type: U32::new(LE, n_type),
    };
    out.extend_from_slice(object::bytes_of(&header));
    out.extend_from_slice(name);
    out.push(0);
    out.resize(out.len().next_multiple_of(NOTE_ALIGN), 0);
    Ok(())
}

/// An ELF64 little-endian core file opened for reading: pmem's own output,
/// QEMU's dump-guest-memory, kdump vmcores, /proc/kcore-shaped files.
///
/// Memory is what the `PT_LOAD`s with file data describe, by `p_paddr`:
/// * only the file-backed `p_filesz` bytes count; a `p_memsz` tail beyond
///   them is left out of the memory map rather than claimed as zeros
///   (makedumpfile uses such tails for pages it excluded, which were not
///   necessarily zero);
/// * segments with `p_filesz == 0` or `p_paddr == u64::MAX` (kcore's mark
///   for mappings without a physical address) are skipped;
/// * the rest, sorted by `p_paddr`, must not overlap (adjacent is fine).
#[derive(Debug)]
pub struct ElfReader {
    mapped: MappedFile,
    metadata: ImageMetadata,
}

/// One `PT_LOAD` kept for the memory map.
struct Load {
    range: Range,
    offset: u64,
    vaddr: u64,
    index: usize,
}

impl Load {
    fn piece(&self) -> FilePiece {
        FilePiece {
            phys: self.range,
            file_offset: self.offset,
        }
    }
}

mapped_file_reader!(ElfReader, Format::Elf);

impl ElfReader {
    /// Checks the identification, reads the program headers, collects the
    /// notes and the `PT_LOAD` segments, and maps each segment's bytes.
    pub fn open(path: &Path, file: impl Into<ImageFile>) -> Result<ElfReader, FormatError> {
        let file: ImageFile = file.into();
        let image = Parsing::new(path, &file, Format::Elf)?.nonempty()?;
        check_ident(image)?;
        // ReadCache reads only the ranges asked for, so the (possibly huge)
        // segment data is never loaded while parsing.
        let cache = ReadCache::new(&file);
        let header = core_header(image, &cache)?;
        let phoff = header.e_phoff(LE);
        let mut notes = Notes::default();
        let mut loads = Vec::new();
        for (index, phdr) in program_headers(image, header, &cache)?.iter().enumerate() {
            let segment = Segment { index, phdr, phoff };
            match phdr.p_type(LE) {
                E::PT_NOTE => notes.read(image, &cache, segment)?,
                E::PT_LOAD => loads.extend(segment.load(image)?),
                _ => {}
            }
        }
        let machine = header.e_machine(LE);
        drop(cache);
        sort_disjoint(image, phoff, &mut loads)?;
        let direct_map_offset = direct_map_offset(&loads);
        let map = FileMap::new(loads.iter().map(Load::piece).collect())
            .map_err(|e| image.corrupt(phoff, e.to_string()))?;
        Ok(ElfReader {
            mapped: MappedFile::new(path, file, map),
            metadata: ImageMetadata {
                arch: Some(Arch::from_elf_machine(machine)),
                metadata_json: notes.metadata_json,
                vmcoreinfo: notes.vmcoreinfo,
                symbols: notes.symbols,
                time_map_json: notes.time_map_json,
                direct_map_offset,
                ..ImageMetadata::default()
            },
        })
    }
}

/// The bytes `object` parses an image from.
type Cache<'f> = ReadCache<&'f ImageFile>;

/// Checks the identification ourselves first: object would only say
/// "unsupported", and ELF32 or big-endian deserve a clear message.
fn check_ident(image: Parsing<'_>) -> Result<(), FormatError> {
    let len = image.len;
    let unsupported = |offset: u64, reason: &str| FormatError::Unsupported {
        path: image.path.into(),
        offset,
        reason: reason.into(),
    };
    if len < EHDR_LEN {
        return Err(image.corrupt(
            0,
            format!("truncated ELF header: the file has {len} bytes, the header needs {EHDR_LEN}"),
        ));
    }
    let mut ident = [0u8; 16];
    image.read_exact_at(0, &mut ident)?;
    match ident[4] {
        E::ELFCLASS64 => {}
        E::ELFCLASS32 => {
            return Err(unsupported(
                4,
                "32-bit ELF (ELFCLASS32) images are not supported, only ELF64",
            ))
        }
        class => return Err(image.corrupt(4, format!("unknown ELF class {class}"))),
    }
    match ident[5] {
        E::ELFDATA2LSB => {}
        E::ELFDATA2MSB => return Err(unsupported(5, "big-endian ELF images are not supported")),
        data => return Err(image.corrupt(5, format!("unknown ELF data encoding {data}"))),
    }
    Ok(())
}

/// The ELF header of a core file (`ET_CORE`).
fn core_header<'d>(
    image: Parsing<'_>,
    data: &'d Cache<'_>,
) -> Result<&'d FileHeader64<LE>, FormatError> {
    let header = FileHeader64::<LE>::parse(data)
        .map_err(|e| image.corrupt(0, format!("ELF header: {e}")))?;
    let e_type = header.e_type(LE);
    if e_type != E::ET_CORE {
        return Err(image.corrupt(
            0x10,
            format!(
                "e_type {e_type} is not ET_CORE ({}): not a memory image",
                E::ET_CORE
            ),
        ));
    }
    Ok(header)
}

/// The program header table, checked to lie inside the file.
fn program_headers<'d>(
    image: Parsing<'_>,
    header: &FileHeader64<LE>,
    data: &'d Cache<'_>,
) -> Result<&'d [ProgramHeader64<LE>], FormatError> {
    let len = image.len;
    let phoff = header.e_phoff(LE);
    let phnum = header
        .phnum(LE, data)
        .map_err(|e| image.corrupt(0x38, format!("e_phnum: {e}")))?;
    if phoff != 0 && phnum != 0 {
        // Checked before object reads the table, so that a lying phnum
        // cannot make it allocate more than the file holds.
        let table = (phnum as u64).saturating_mul(PHDR_LEN);
        if phoff.checked_add(table).is_none_or(|end| end > len) {
            return Err(image.corrupt(phoff, format!(
                "the program header table ({phnum} entries of {PHDR_LEN} bytes) runs past the end of the file ({len:#x} bytes): truncated"
            )));
        }
    }
    header
        .program_headers(LE, data)
        .map_err(|e| image.corrupt(phoff, format!("program headers: {e}")))
}

/// One program header and where it is.
#[derive(Clone, Copy)]
struct Segment<'d> {
    index: usize,
    phdr: &'d ProgramHeader64<LE>,
    /// File offset of the program header table.
    phoff: u64,
}

impl Segment<'_> {
    /// File offset of this program header (where its errors point).
    fn at(&self) -> u64 {
        self.phoff + self.index as u64 * PHDR_LEN
    }

    /// Whether the segment's data lies inside the file.
    fn in_file(&self, len: u64) -> bool {
        let (offset, filesz) = (self.phdr.p_offset(LE), self.phdr.p_filesz(LE));
        offset.checked_add(filesz).is_some_and(|end| end <= len)
    }

    /// The memory a `PT_LOAD` holds; `None` for one that holds none (no
    /// file bytes, or p_paddr unknown).
    fn load(&self, image: Parsing<'_>) -> Result<Option<Load>, FormatError> {
        let (index, at, len) = (self.index, self.at(), image.len);
        let (offset, filesz) = (self.phdr.p_offset(LE), self.phdr.p_filesz(LE));
        let paddr = self.phdr.p_paddr(LE);
        if filesz == 0 || paddr == u64::MAX {
            return Ok(None);
        }
        let range = paddr
            .checked_add(filesz)
            .and_then(|end| Range::new(paddr, end))
            .ok_or_else(|| image.corrupt(at, format!("program header {index}: PT_LOAD at {paddr:#x} (+{filesz:#x}) runs past 2^64")))?;
        if !self.in_file(len) {
            return Err(image.corrupt(at, format!("program header {index}: PT_LOAD {range} data at file offset {offset:#x} (+{filesz:#x}) runs past the end of the file ({len:#x} bytes): truncated")));
        }
        Ok(Some(Load {
            range,
            offset,
            vaddr: self.phdr.p_vaddr(LE),
            index,
        }))
    }
}

/// The notes pmem reads: the first of each kind wins.
#[derive(Default)]
struct Notes {
    vmcoreinfo: Option<Vec<u8>>,
    metadata_json: Option<String>,
    symbols: Option<Vec<u8>>,
    time_map_json: Option<String>,
}

impl Notes {
    /// Reads the notes of a `PT_NOTE` segment (at most
    /// [`MAX_NOTE_SEGMENT`] bytes, read whole).
    fn read(
        &mut self,
        image: Parsing<'_>,
        data: &Cache<'_>,
        segment: Segment<'_>,
    ) -> Result<(), FormatError> {
        let (index, at, phdr) = (segment.index, segment.at(), segment.phdr);
        let (offset, filesz) = (phdr.p_offset(LE), phdr.p_filesz(LE));
        if filesz > MAX_NOTE_SEGMENT {
            return Err(image.corrupt(at, format!("program header {index}: PT_NOTE of {filesz:#x} bytes exceeds the {MAX_NOTE_SEGMENT:#x}-byte limit")));
        }
        if !segment.in_file(image.len) {
            return Err(image.corrupt(at, format!("program header {index}: PT_NOTE data at {offset:#x} (+{filesz:#x}) runs past the end of the file: truncated")));
        }
        let bytes = phdr.data(LE, data).map_err(|()| {
            image.corrupt(
                offset,
                format!("program header {index}: cannot read the PT_NOTE data"),
            )
        })?;
        // Tools disagree on p_align for notes (0, 4, 8, 4096): only 8 means
        // 8-byte alignment, as for binutils.
        let align = if phdr.p_align(LE) == 8 { 8 } else { 4 };
        let mut notes = NoteIterator::<FileHeader64<LE>>::new(LE, align, bytes)
            .map_err(|e| image.corrupt(offset, format!("program header {index}: {e}")))?;
        while let Some(note) = notes.next().map_err(|e| {
            image.corrupt(
                offset,
                format!("program header {index}: malformed note: {e}"),
            )
        })? {
            if note.name() == VMCOREINFO_NAME && self.vmcoreinfo.is_none() {
                self.vmcoreinfo = Some(note.desc().to_vec());
            } else if note.name() == PMEM_NAME
                && [NT_PMEM_METADATA, NT_PMEM_METADATA_OLD].contains(&note.n_type(LE))
                && self.metadata_json.is_none()
            {
                let json = String::from_utf8(note.desc().to_vec()).map_err(|_| {
                    image.corrupt(
                        offset,
                        format!("program header {index}: the PMEM metadata note is not UTF-8"),
                    )
                })?;
                self.metadata_json = Some(json);
            } else if note.name() == PMEM_NAME
                && note.n_type(LE) == NT_PMEM_SYMBOLS
                && self.symbols.is_none()
            {
                self.symbols = Some(note.desc().to_vec());
            } else if note.name() == PMEM_NAME
                && note.n_type(LE) == NT_PMEM_TIME_MAP
                && self.time_map_json.is_none()
            {
                // Padded with spaces; all spaces when the copy gave none.
                let text = String::from_utf8_lossy(note.desc());
                let text = text.trim_end();
                self.time_map_json = (!text.is_empty()).then(|| text.to_owned());
            }
        }
        Ok(())
    }
}

/// Sorts the loads by address and refuses overlapping ones.
fn sort_disjoint(image: Parsing<'_>, phoff: u64, loads: &mut [Load]) -> Result<(), FormatError> {
    loads.sort_by_key(|l| l.range.start);
    for pair in loads.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.range.start < a.range.end {
            return Err(image.corrupt(
                phoff + b.index as u64 * PHDR_LEN,
                format!(
                    "program header {}: PT_LOAD {} overlaps program header {} ({})",
                    b.index, b.range, a.index, a.range
                ),
            ));
        }
    }
    Ok(())
}

/// The direct-map base when every segment was mapped at p_paddr + base.
/// A zero p_vaddr means "no virtual address" (QEMU, pmem without a base).
fn direct_map_offset(loads: &[Load]) -> Option<u64> {
    let base = loads
        .first()?
        .vaddr
        .wrapping_sub(loads.first()?.range.start);
    let consistent = loads
        .iter()
        .all(|l| l.vaddr != 0 && l.vaddr.wrapping_sub(l.range.start) == base);
    (consistent && base != 0).then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{check_symbols_and_memory, map, symbol_bundle};
    use crate::ImageReader;
    use pmem_core::sink::HashingSink;
    use pmem_core::ImageWriter;
    use pmem_core::PhysicalMemory;

    fn image(plan: &Plan) -> Vec<u8> {
        crate::test_util::write_image(Format::Elf, plan)
    }

    fn open_bytes(bytes: &[u8]) -> Result<ElfReader, FormatError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.elf");
        std::fs::write(&path, bytes).unwrap();
        let result = ElfReader::open(&path, File::open(&path).unwrap());
        if let Err(e) = &result {
            assert_eq!(e.path(), path);
        }
        result
    }

    fn phdr_at(index: usize) -> usize {
        (EHDR_LEN + index as u64 * PHDR_LEN) as usize
    }

    fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn header_bytes() {
        let mut plan = Plan::new(map(&[(0x1000, 0x1800)]), Arch::X86_64);
        plan.vmcoreinfo = Some(b"PAGESIZE=4096\n".to_vec());
        let bytes = image(&plan);
        #[rustfmt::skip]
        let ehdr: [u8; 64] = [
            0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ident: 64-bit, LE
            4, 0, 62, 0, 1, 0, 0, 0,    // ET_CORE, EM_X86_64, EV_CURRENT
            0, 0, 0, 0, 0, 0, 0, 0,     // e_entry
            64, 0, 0, 0, 0, 0, 0, 0,    // e_phoff
            0, 0, 0, 0, 0, 0, 0, 0,     // e_shoff
            0, 0, 0, 0, 64, 0, 56, 0,   // e_flags, e_ehsize, e_phentsize
            2, 0, 0, 0, 0, 0, 0, 0,     // e_phnum, e_shentsize, e_shnum, e_shstrndx
        ];
        assert_eq!(&bytes[..64], &ehdr);
        #[rustfmt::skip]
        let load: [u8; 56] = [
            1, 0, 0, 0, 7, 0, 0, 0,             // PT_LOAD, RWX
            0, 0x10, 0, 0, 0, 0, 0, 0,          // p_offset 0x1000
            0, 0, 0, 0, 0, 0, 0, 0,             // p_vaddr
            0, 0x10, 0, 0, 0, 0, 0, 0,          // p_paddr
            0, 8, 0, 0, 0, 0, 0, 0,             // p_filesz 0x800
            0, 8, 0, 0, 0, 0, 0, 0,             // p_memsz
            0, 0, 0, 0, 0, 0, 0, 0,             // p_align 0, as kdump's
        ];
        assert_eq!(&bytes[phdr_at(1)..phdr_at(2)], &load);
        // The note right after the program headers: namesz 11, descsz 14,
        // type 0, "VMCOREINFO\0" padded to 12, the descriptor padded to 16.
        let note = &bytes[phdr_at(2)..phdr_at(2) + 12 + 12 + 16];
        assert_eq!(&note[..12], &[11, 0, 0, 0, 14, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&note[12..24], b"VMCOREINFO\0\0");
        assert_eq!(&note[24..], b"PAGESIZE=4096\n\0\0");
        assert_eq!(bytes.len(), 0x1800);
    }

    /// The notes of an image: (name, n_type, descriptor).
    fn notes_of(bytes: &[u8]) -> Vec<(Vec<u8>, u32, Vec<u8>)> {
        let header = FileHeader64::<LE>::parse(bytes).unwrap();
        let phdrs = header.program_headers(LE, bytes).unwrap();
        let note = phdrs.iter().find(|p| p.p_type(LE) == E::PT_NOTE).unwrap();
        let mut notes = note.notes(LE, bytes).unwrap().unwrap();
        let mut out = Vec::new();
        while let Some(n) = notes.next().unwrap() {
            out.push((n.name().to_vec(), n.n_type(LE), n.desc().to_vec()));
        }
        out
    }

    #[test]
    fn shaped_like_a_kdump_vmcore_for_crash() {
        let mut plan = Plan::new(map(&[(0, 0x1000), (0x3000, 0x5000)]), Arch::X86_64);
        plan.vmcoreinfo = Some(b"KERNELOFFSET=1a000000\n".to_vec());
        plan.metadata_json = Some("{\"tool\":\"pmem\"}".into());
        plan.symbols = Some(b"symbols.tar".to_vec());
        let bytes = image(&plan);
        let header = FileHeader64::<LE>::parse(&bytes[..]).unwrap();
        let phdrs = header.program_headers(LE, &bytes[..]).unwrap();
        // crash: PT_NOTE first, then PT_LOADs; a first PT_LOAD with p_align
        // 0 makes the file a kdump vmcore, whose KASLR offset crash applies.
        assert_eq!(phdrs[0].p_type(LE), E::PT_NOTE);
        for phdr in &phdrs[1..] {
            assert_eq!(phdr.p_type(LE), E::PT_LOAD);
            assert_eq!(phdr.p_align(LE), 0);
            assert_eq!(phdr.p_offset(LE) % PAGE_SIZE, 0, "data stays page-aligned");
        }
        // No note a core file reader takes for register or process state
        // (NT_PRSTATUS 1, NT_FPREGSET 2, NT_PRPSINFO 3, NT_TASKSTRUCT 4,
        // NT_AUXV 6), whatever its name.
        let notes = notes_of(&bytes);
        assert_eq!(notes.len(), 3);
        assert_eq!(notes[0].0, b"VMCOREINFO");
        assert_eq!(notes[0].1, NT_VMCOREINFO);
        assert_eq!((&notes[1].0[..], notes[1].1), (PMEM_NAME, 0x4d45_4d50));
        // The symbol bundle last, padded to the 4-byte note alignment.
        assert_eq!((&notes[2].0[..], notes[2].1), (PMEM_NAME, 0x4d59_5350));
        assert_eq!(notes[2].2, b"symbols.tar");
        for (name, n_type, _) in &notes {
            assert!(
                ![1, 2, 3, 4, 6].contains(n_type),
                "{name:?} has core type {n_type}"
            );
        }
    }

    #[test]
    fn metadata_of_older_images_with_note_type_1_is_still_read() {
        let mut plan = Plan::new(map(&[(0, 0x1000)]), Arch::X86_64);
        plan.metadata_json = Some("{\"old\":true}".into());
        let mut bytes = image(&plan);
        // The note right after the program headers: n_type at +8.
        let n_type = phdr_at(2) + 8;
        assert_eq!(bytes[n_type..n_type + 4], NT_PMEM_METADATA.to_le_bytes());
        bytes[n_type..n_type + 4].copy_from_slice(&NT_PMEM_METADATA_OLD.to_le_bytes());
        let r = open_bytes(&bytes).unwrap();
        assert_eq!(
            r.metadata().metadata_json.as_deref(),
            Some("{\"old\":true}")
        );
        // Any other type under the PMEM name is not pmem's metadata.
        bytes[n_type..n_type + 4].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(open_bytes(&bytes).unwrap().metadata().metadata_json, None);
    }

    /// An image with the three notes; the offset of the symbol bundle's
    /// note header.
    fn image_with_symbols(symbols: &[u8]) -> (Vec<u8>, usize) {
        let mut plan = Plan::new(map(&[(0, 0x1000)]), Arch::X86_64);
        plan.vmcoreinfo = Some(b"OSRELEASE=6.1.0\n".to_vec());
        plan.metadata_json = Some("{}".into());
        plan.symbols = Some(symbols.to_vec());
        let bytes = image(&plan);
        // VMCOREINFO: 12 + 12 + 16; the metadata: 12 + 8 + 4.
        (bytes, phdr_at(2) + 40 + 24)
    }

    #[test]
    fn symbol_bundle_round_trip() {
        let symbols = symbol_bundle();
        let (bytes, at) = image_with_symbols(&symbols);
        assert_eq!(&bytes[at..at + 4], &5u32.to_le_bytes(), "namesz");
        assert_eq!(&bytes[at + 8..at + 12], b"PSYM");
        let mut r = open_bytes(&bytes).unwrap();
        check_symbols_and_memory(&mut r, &symbols, 0);
        assert_eq!(r.metadata().metadata_json.as_deref(), Some("{}"));
        // Without a bundle, none is read; under another type, the
        // descriptor is not taken for one.
        let plan = Plan::new(map(&[(0, 0x1000)]), Arch::X86_64);
        assert_eq!(open_bytes(&image(&plan)).unwrap().metadata().symbols, None);
        let mut other = bytes.clone();
        other[at + 8..at + 12].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(open_bytes(&other).unwrap().metadata().symbols, None);
    }

    #[test]
    fn the_time_map_note_follows_the_data_in_the_room_reserved() {
        let mut plan = Plan::new(map(&[(0x1000, 0x3000), (0x10000, 0x10800)]), Arch::X86_64);
        plan.metadata_json = Some("{}".into());
        plan.time_map = pmem_core::TimeMapPlan::Measured;
        let json = "{\"order\":\"address\",\"regions\":[]}";
        let bytes = crate::test_util::write_image_with_time_map(Format::Elf, &plan, Some(json));
        // As long as planned before the copy (uploads announce it).
        assert_eq!(
            crate::image_size(Format::Elf, &plan).unwrap(),
            Some(bytes.len() as u64)
        );
        let r = open_bytes(&bytes).unwrap();
        assert_eq!(r.metadata().time_map_json.as_deref(), Some(json));
        assert_eq!(r.metadata().metadata_json.as_deref(), Some("{}"));
        // The memory is where it was: the last range's bytes end where the
        // note's padding starts.
        let mut page = vec![0u8; 0x800];
        let mut r = r;
        r.read_at(0x10000, &mut page).unwrap();
        assert_eq!(page, vec![0x22; 0x800]);
        let note = position(&bytes, b"PTIM") - 8;
        assert_eq!(note % 4, 0);
        assert!(bytes[note - 4..note].iter().all(|&b| b == 0x22 || b == 0));
        // No time map given: a note of spaces, read as none.
        let blank = crate::test_util::write_image_with_time_map(Format::Elf, &plan, None);
        assert_eq!(blank.len(), bytes.len());
        assert_eq!(open_bytes(&blank).unwrap().metadata().time_map_json, None);
        // Not asked for: no room, no note.
        plan.time_map = pmem_core::TimeMapPlan::None;
        let plain = crate::test_util::write_image_with_time_map(Format::Elf, &plan, Some(json));
        assert!(plain.len() < bytes.len());
        assert_eq!(open_bytes(&plain).unwrap().metadata().time_map_json, None);
        // Carried by a conversion: room for exactly its JSON, however long
        // (an input's time map can be longer than this plan's bound).
        let long = format!(
            "{{\"order\":\"address\",\"regions\":[],\"note\":\"{}\"}}",
            "x".repeat(pmem_core::TimeMap::json_bound(&plan))
        );
        plan.time_map = pmem_core::TimeMapPlan::Carried(long.clone());
        let carried = crate::test_util::write_image_with_time_map(Format::Elf, &plan, Some(&long));
        assert_eq!(
            crate::image_size(Format::Elf, &plan).unwrap(),
            Some(carried.len() as u64)
        );
        let r = open_bytes(&carried).unwrap();
        assert_eq!(r.metadata().time_map_json.as_deref(), Some(long.as_str()));
    }

    fn position(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    }

    #[test]
    fn a_symbol_note_claiming_more_than_its_segment_is_refused() {
        let (bytes, at) = image_with_symbols(&[7; 100]);
        for descsz in [0xffff_fff0u32, 101] {
            let mut b = bytes.clone();
            b[at + 4..at + 8].copy_from_slice(&descsz.to_le_bytes());
            let err = open_bytes(&b).unwrap_err();
            assert_eq!(err.offset(), phdr_at(2) as u64, "{err}");
            assert!(err.to_string().contains("malformed note"), "{err}");
        }
        // The file cut inside the bundle: the PT_NOTE runs past its end.
        let err = open_bytes(&bytes[..at + 50]).unwrap_err();
        assert_eq!(err.offset(), phdr_at(0) as u64, "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn unsorted_segments_are_sorted() {
        let plan = Plan::new(map(&[(0, 0x1000), (0x3000, 0x4000)]), Arch::X86_64);
        let mut bytes = image(&plan);
        put_u64(&mut bytes, phdr_at(0) + 24, 0x10000); // first PT_LOAD's p_paddr
        let mut r = open_bytes(&bytes).unwrap();
        assert_eq!(
            r.memory_map(),
            &map(&[(0x3000, 0x4000), (0x10000, 0x11000)])
        );
        let mut b = [0u8; 1];
        r.read_at(0x10000, &mut b).unwrap();
        assert_eq!(b, [0x11]);
        r.read_at(0x3fff, &mut b).unwrap();
        assert_eq!(b, [0x22]);
    }

    #[test]
    fn overlapping_segments_name_the_phdr() {
        let plan = Plan::new(map(&[(0, 0x2000), (0x3000, 0x4000)]), Arch::X86_64);
        let mut bytes = image(&plan);
        put_u64(&mut bytes, phdr_at(1) + 24, 0x1fff);
        let err = open_bytes(&bytes).unwrap_err();
        assert_eq!(err.offset(), phdr_at(1) as u64);
        assert!(err.to_string().contains("program header 1"), "{err}");
        assert!(err.to_string().contains("overlaps"), "{err}");
    }

    #[test]
    fn truncated_files() {
        let plan = Plan::new(map(&[(0, 0x2000), (0x3000, 0x4000)]), Arch::X86_64);
        let bytes = image(&plan);
        let err = open_bytes(&bytes[..phdr_at(1) + 10]).unwrap_err();
        assert_eq!(err.offset(), EHDR_LEN);
        assert!(err.to_string().contains("program header table"), "{err}");
        let err = open_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
        assert_eq!(err.offset(), phdr_at(1) as u64);
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(open_bytes(&bytes[..40]).is_err());
        assert!(matches!(open_bytes(&[]), Err(FormatError::Empty { .. })));
    }

    #[test]
    fn lying_counts_and_sizes() {
        let plan = Plan::new(map(&[(0, 0x1000)]), Arch::X86_64);
        let bytes = image(&plan);
        // e_phnum far beyond the file.
        let mut b = bytes.clone();
        b[0x38..0x3a].copy_from_slice(&0xfffeu16.to_le_bytes());
        assert!(open_bytes(&b).is_err());
        // PN_XNUM without a section header to hold the real count.
        b[0x38..0x3a].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(open_bytes(&b).is_err());
        // A PT_LOAD claiming 2^64 - 1 bytes.
        let mut b = bytes.clone();
        put_u64(&mut b, phdr_at(0) + 32, u64::MAX);
        assert!(open_bytes(&b).is_err());
        // A PT_NOTE over the size limit.
        let mut b = bytes.clone();
        b[phdr_at(0)..phdr_at(0) + 4].copy_from_slice(&E::PT_NOTE.to_le_bytes());
        put_u64(&mut b, phdr_at(0) + 32, MAX_NOTE_SEGMENT + 1);
        let err = open_bytes(&b).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
    }

    #[test]
    fn malformed_note() {
        let mut plan = Plan::new(map(&[(0, 0x1000)]), Arch::X86_64);
        plan.metadata_json = Some("{}".into());
        let mut bytes = image(&plan);
        let note = phdr_at(2);
        bytes[note..note + 4].copy_from_slice(&1000u32.to_le_bytes()); // namesz
        let err = open_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("note"), "{err}");
    }

    #[test]
    fn unsupported_variants() {
        let plan = Plan::new(map(&[(0, 0x1000)]), Arch::X86_64);
        let bytes = image(&plan);
        let mut b = bytes.clone();
        b[4] = E::ELFCLASS32;
        assert!(matches!(
            open_bytes(&b),
            Err(FormatError::Unsupported { offset: 4, .. })
        ));
        let mut b = bytes.clone();
        b[5] = E::ELFDATA2MSB;
        assert!(matches!(
            open_bytes(&b),
            Err(FormatError::Unsupported { offset: 5, .. })
        ));
        let mut b = bytes.clone();
        b[0x10] = E::ET_EXEC as u8;
        assert!(open_bytes(&b).unwrap_err().to_string().contains("ET_CORE"));
    }

    #[test]
    fn foreign_layouts() {
        // kcore-like: a segment without physical address, an empty one, a
        // memsz tail, p_vaddr = direct map + p_paddr.
        let plan = Plan::new(
            map(&[(0, 0x1000), (0x2000, 0x3000), (0x5000, 0x6000)]),
            Arch::X86_64,
        );
        let mut b = image(&plan);
        let base = 0xffff_8880_0000_0000u64;
        put_u64(&mut b, phdr_at(0) + 24, u64::MAX); // no p_paddr
        put_u64(&mut b, phdr_at(0) + 16, 0xffff_ffff_8100_0000);
        put_u64(&mut b, phdr_at(1) + 16, base + 0x2000);
        put_u64(&mut b, phdr_at(1) + 40, 0x5000); // memsz > filesz
        put_u64(&mut b, phdr_at(2) + 16, base + 0x5000);
        let r = open_bytes(&b).unwrap();
        assert_eq!(r.memory_map(), &map(&[(0x2000, 0x3000), (0x5000, 0x6000)]));
        assert_eq!(r.metadata().direct_map_offset, Some(base));
        put_u64(&mut b, phdr_at(2) + 32, 0); // filesz 0: skipped
        put_u64(&mut b, phdr_at(1) + 16, 0); // vaddr 0: no direct map
        let r = open_bytes(&b).unwrap();
        assert_eq!(r.memory_map(), &map(&[(0x2000, 0x3000)]));
        assert_eq!(r.metadata().direct_map_offset, None);
    }

    #[test]
    fn x86_is_written_as_elf64_em_386() {
        let bytes = image(&Plan::new(map(&[(0, 0x1000)]), Arch::X86));
        assert_eq!(bytes[4], E::ELFCLASS64);
        assert_eq!(open_bytes(&bytes).unwrap().metadata().arch, Some(Arch::X86));
    }

    #[test]
    fn oversized_notes_are_refused_when_writing() {
        let mut plan = Plan::new(map(&[(0, 0x1000)]), Arch::X86_64);
        plan.vmcoreinfo = Some(vec![b'x'; MAX_NOTE_SEGMENT as usize]);
        let sink = HashingSink::stream(Box::new(std::io::sink()));
        let mut w = writer(Box::new(sink));
        assert!(matches!(w.begin(&plan), Err(WriteError::Plan(_))));
    }
}
