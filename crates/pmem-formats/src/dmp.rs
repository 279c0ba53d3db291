//! Microsoft full memory crash dumps ("PAGE" "DU64" / "PAGE" "DUMP"), as
//! WinDbg and Volatility 3 (WindowsCrashDump64Layer / 32Layer) read them.
//!
//! Layout written (64-bit; the 32-bit layout has a one-page header and
//! 32-bit fields at other offsets, see [`Layout`]):
//! * a 0x2000-byte `_DUMP_HEADER64`: signature, version (MinorVersion =
//!   build number), DirectoryTableBase (CR3), kernel list heads, machine,
//!   processors, KdDebuggerDataBlock, the physical memory descriptor,
//!   DumpType, RequiredDumpSpace, SystemTime;
//! * DumpType 1 (full dump) when the runs fit the header's descriptor (42 on
//!   64-bit): page data of each run in order from the end of the header;
//! * DumpType 5 (bitmap dump) otherwise: a `_SUMMARY_DUMP` right after the
//!   header ("FDMP" "DUMP" in both layouts) with one bit per physical page
//!   (BitmapSize a multiple of 32), page data from its HeaderSize (an
//!   absolute file offset: Volatility takes it as such) in ascending page
//!   order. The descriptor then lists no runs: the bitmap is the map.
//!
//! The fields are those kdmp-parser, rizin, Rekall and Volatility 3 define
//! and check. Older pmem builds wrote "SDMP" "DU64" and BitmapSize =
//! highest page + 1, which kdmp-parser refuses; the reader still opens them.
//!
//! Unused header bytes are zero, so the output depends only on the plan.
//! Zero pages are holes on file sinks, as in the other formats.

use crate::bytes::{u32_le, uint_le};
use crate::image_file::Parsing;
use crate::reader::{mapped_file_reader, MappedFile};
use crate::write::{check_plan_nonempty, finish_sink, plan_error, write_all, write_body};
use crate::{Format, FormatError, ImageFile, ImageMetadata};
use pmem_core::writer::ChunkCursor;
use pmem_core::{
    Arch, ByteSink, Chunk, FileMap, FilePiece, ImageWriter, MemoryMap, Plan, Range, SinkSummary,
    WindowsMetadata, WriteError, PAGE_SIZE,
};
#[cfg(test)]
use std::fs::File;
use std::path::Path;

/// DumpType of a full dump whose runs are listed in the header.
pub const DUMP_TYPE_FULL: u32 = 1;
/// DumpType of a full dump whose pages are listed in a bitmap.
pub const DUMP_TYPE_BITMAP: u32 = 5;
/// Size of the `_SUMMARY_DUMP` fields before the bitmap.
pub const SUMMARY_LEN: u64 = 0x38;
/// Signature of the summary of a full-memory bitmap dump (DumpType 5);
/// "SDMP" marks a kernel summary (DumpType 6).
const SUMMARY_SIGNATURE_FULL: &[u8; 4] = b"FDMP";
/// The summary's ValidDump, "DUMP" in both layouts (not the header's
/// "DU64"): kdmp-parser and rizin refuse anything else.
const SUMMARY_VALID_DUMP: &[u8; 4] = b"DUMP";
/// Largest bitmap written or read: 256 MiB of bits maps 8 TiB of physical
/// address space; anything larger is a corrupt header, not a machine.
const MAX_BITMAP_BYTES: u64 = 256 << 20;
/// MajorVersion of a free (retail) build; checked builds used 0xC.
const MAJOR_FREE: u32 = 0xF;
const MAJOR_CHECKED: u32 = 0xC;

/// The two header layouts. Offsets are those of `_DUMP_HEADER64` and
/// `_DUMP_HEADER` as Volatility 3's crash64/crash symbol tables define them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `_DUMP_HEADER64`, signature "PAGE" "DU64": x86-64 machines.
    Bits64,
    /// `_DUMP_HEADER`, signature "PAGE" "DUMP": 32-bit x86 machines.
    Bits32,
}

/// Field offsets and widths of one layout.
struct Fields {
    header_len: u64,
    valid_dump: &'static [u8; 4],
    machine: u32,
    /// Width in bytes of pointer-sized fields (CR3, list heads, KDBG,
    /// NumberOfPages, run entries' halves).
    word: usize,
    dtb: usize,
    pfn_database: usize,
    ps_loaded_module_list: usize,
    ps_active_process_head: usize,
    machine_type: usize,
    processors: usize,
    kdbg: usize,
    number_of_runs: usize,
    number_of_pages: usize,
    runs: usize,
    /// First byte after the descriptor's room: Windows reserves 700 bytes
    /// for it (PhysicalMemoryBlockBuffer) from `number_of_runs`.
    runs_end: usize,
    dump_type: usize,
    required_space: usize,
    system_time: usize,
    /// PaeEnabled (32-bit only).
    pae: Option<usize>,
}

const FIELDS64: Fields = Fields {
    header_len: 0x2000,
    valid_dump: b"DU64",
    machine: 0x8664,
    word: 8,
    dtb: 0x10,
    pfn_database: 0x18,
    ps_loaded_module_list: 0x20,
    ps_active_process_head: 0x28,
    machine_type: 0x30,
    processors: 0x34,
    kdbg: 0x80,
    number_of_runs: 0x88,
    number_of_pages: 0x90,
    runs: 0x98,
    runs_end: 0x88 + 700,
    dump_type: 0xF98,
    required_space: 0xFA0,
    system_time: 0xFA8,
    pae: None,
};

const FIELDS32: Fields = Fields {
    header_len: 0x1000,
    valid_dump: b"DUMP",
    machine: 0x14C,
    word: 4,
    dtb: 0x10,
    pfn_database: 0x14,
    ps_loaded_module_list: 0x18,
    ps_active_process_head: 0x1C,
    machine_type: 0x20,
    processors: 0x24,
    kdbg: 0x60,
    number_of_runs: 0x64,
    number_of_pages: 0x68,
    runs: 0x6C,
    runs_end: 0x64 + 700,
    dump_type: 0xF88,
    required_space: 0xFA0,
    system_time: 0xFC0,
    pae: Some(0x5C),
};

impl Layout {
    /// The layout for an architecture; `None` for machines Windows crash
    /// dumps of this kind do not describe.
    pub fn for_arch(arch: Arch) -> Option<Layout> {
        match arch {
            Arch::X86_64 => Some(Layout::Bits64),
            Arch::X86 => Some(Layout::Bits32),
            _ => None,
        }
    }

    fn fields(self) -> &'static Fields {
        match self {
            Layout::Bits64 => &FIELDS64,
            Layout::Bits32 => &FIELDS32,
        }
    }

    /// Header size: page data (or the summary) starts here.
    pub fn header_len(self) -> u64 {
        self.fields().header_len
    }

    /// How many runs the header's physical memory descriptor holds: 42 on
    /// 64-bit, 86 on 32-bit. More runs make a bitmap dump.
    pub fn max_runs(self) -> usize {
        let f = self.fields();
        (f.runs_end - f.runs) / (2 * f.word)
    }

    /// The machine a dump of this layout comes from (the inverse of
    /// [`for_arch`](Self::for_arch)).
    pub fn arch(self) -> Arch {
        match self {
            Layout::Bits64 => Arch::X86_64,
            Layout::Bits32 => Arch::X86,
        }
    }
}

fn put(buf: &mut [u8], at: usize, width: usize, value: u64) {
    buf[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

/// How the pages of a dump are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpKind {
    /// DumpType 1: runs in the header.
    Full,
    /// DumpType 5: a page bitmap after the header.
    Bitmap,
}

impl DumpKind {
    /// The header's DumpType value for this kind (1 or 5).
    pub fn dump_type(self) -> u32 {
        match self {
            DumpKind::Full => DUMP_TYPE_FULL,
            DumpKind::Bitmap => DUMP_TYPE_BITMAP,
        }
    }
}

/// Streams a crash dump: the header (and bitmap) is fixed in `begin`; page
/// data then follows contiguously in the order the pipeline delivers it.
pub struct DmpWriter {
    sink: Box<dyn ByteSink>,
    cursor: ChunkCursor,
    /// Forces a dump kind (tests); `None` picks Full when the runs fit.
    force_kind: Option<DumpKind>,
}

impl DmpWriter {
    /// A writer sending the dump to `sink`: a full dump (runs in the
    /// header) when the plan's ranges fit there, a bitmap dump otherwise.
    pub fn new(sink: Box<dyn ByteSink>) -> DmpWriter {
        DmpWriter {
            sink,
            cursor: ChunkCursor::default(),
            force_kind: None,
        }
    }

    /// A writer that always writes `kind`, whatever the number of runs.
    pub fn with_kind(sink: Box<dyn ByteSink>, kind: DumpKind) -> DmpWriter {
        DmpWriter {
            force_kind: Some(kind),
            ..DmpWriter::new(sink)
        }
    }
}

impl ImageWriter for DmpWriter {
    fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
        check_plan_nonempty(plan, Format::Dmp)?;
        let head = header(plan, self.force_kind)?;
        write_all(self.sink.as_mut(), &head)?;
        self.cursor = ChunkCursor::new(&plan.ranges);
        Ok(())
    }

    fn write_chunk(&mut self, addr: u64, chunk: Chunk<'_>) -> Result<(), WriteError> {
        // Pages follow each other without gaps in both dump kinds, so the
        // cursor's order check is all the placement there is.
        self.cursor.advance(addr, chunk.len())?;
        write_body(self.sink.as_mut(), chunk)
    }

    fn finish(self: Box<Self>) -> Result<SinkSummary, WriteError> {
        finish_sink(self.sink, &self.cursor)
    }
}

/// Everything before the first page: the dump header, and for a bitmap
/// dump the summary, the bitmap and padding up to HeaderSize.
pub fn header(plan: &Plan, force_kind: Option<DumpKind>) -> Result<Vec<u8>, WriteError> {
    let windows = plan.windows.as_ref().ok_or_else(|| {
        plan_error(
            "a crash dump needs the Windows kernel's metadata (at least CR3, the \
             directory table base) and this image carries none: acquire with \
             `pmem acquire --format dmp` on Windows, convert an image pmem acquired \
             on Windows, or give it with --cr3 (and --build, --kdbg, --processors)",
        )
    })?;
    let layout = Layout::for_arch(plan.arch).ok_or_else(|| {
        plan_error(format!(
            "crash dumps describe x86_64 or i686 machines, not {}",
            plan.arch.name()
        ))
    })?;
    for range in plan.ranges.ranges() {
        if range.start % PAGE_SIZE != 0 || range.end % PAGE_SIZE != 0 {
            return Err(plan_error(format!(
                "range {range} is not page-aligned: crash dumps hold whole 4 KiB pages"
            )));
        }
    }
    let kind = dump_kind(plan, layout, force_kind)?;
    let mut head = common_header(plan, windows, layout, kind)?;
    match kind {
        DumpKind::Full => put_runs(&mut head, plan, layout)?,
        DumpKind::Bitmap => put_bitmap(&mut head, plan, layout)?,
    }
    Ok(head)
}

/// The kind asked for, else a full dump when the runs fit the header.
fn dump_kind(
    plan: &Plan,
    layout: Layout,
    force_kind: Option<DumpKind>,
) -> Result<DumpKind, WriteError> {
    let kind = force_kind.unwrap_or(if plan.ranges.len() <= layout.max_runs() {
        DumpKind::Full
    } else {
        DumpKind::Bitmap
    });
    if kind == DumpKind::Full && plan.ranges.len() > layout.max_runs() {
        return Err(plan_error(format!(
            "{} runs do not fit a full dump header (at most {})",
            plan.ranges.len(),
            layout.max_runs()
        )));
    }
    Ok(kind)
}

/// `value` when it fits a pointer-sized field of `layout`.
fn word(layout: Layout, name: &str, value: u64) -> Result<u64, WriteError> {
    let f = layout.fields();
    let max_word = if f.word == 8 {
        u64::MAX
    } else {
        u64::from(u32::MAX)
    };
    if value > max_word {
        Err(plan_error(format!(
            "{name} {value:#x} does not fit the {}-bit crash dump header",
            f.word * 8
        )))
    } else {
        Ok(value)
    }
}

/// The header fields both dump kinds share.
fn common_header(
    plan: &Plan,
    windows: &WindowsMetadata,
    layout: Layout,
    kind: DumpKind,
) -> Result<Vec<u8>, WriteError> {
    let f = layout.fields();
    let word = |name: &str, value: u64| word(layout, name, value);
    let total_pages = plan.ranges.total_bytes() / PAGE_SIZE;
    let mut head = vec![0u8; f.header_len as usize];
    head[0..4].copy_from_slice(b"PAGE");
    head[4..8].copy_from_slice(f.valid_dump);
    let major = if windows.nt_build_number & 0xF000_0000 == 0xC000_0000 {
        MAJOR_CHECKED
    } else {
        MAJOR_FREE
    };
    put(&mut head, 0x8, 4, u64::from(major));
    put(&mut head, 0xC, 4, u64::from(windows.build()));
    put(&mut head, f.dtb, f.word, word("CR3", windows.cr3)?);
    put(
        &mut head,
        f.pfn_database,
        f.word,
        word("PfnDataBase", windows.pfn_database)?,
    );
    put(
        &mut head,
        f.ps_loaded_module_list,
        f.word,
        word("PsLoadedModuleList", windows.ps_loaded_module_list)?,
    );
    put(
        &mut head,
        f.ps_active_process_head,
        f.word,
        word("PsActiveProcessHead", windows.ps_active_process_head)?,
    );
    put(&mut head, f.machine_type, 4, u64::from(f.machine));
    put(&mut head, f.processors, 4, u64::from(windows.processors));
    put(
        &mut head,
        f.kdbg,
        f.word,
        word("KdDebuggerDataBlock", windows.kdbg)?,
    );
    if let Some(pae) = f.pae {
        // Every 32-bit Windows since 8 runs with PAE (NX needs it), and
        // physical addresses above 4 GiB need it too.
        head[pae] = 1;
    }
    put(&mut head, f.dump_type, 4, u64::from(kind.dump_type()));
    put(&mut head, f.system_time, 8, windows.system_time);
    put(
        &mut head,
        f.number_of_pages,
        f.word,
        word("NumberOfPages", total_pages)?,
    );
    Ok(head)
}

/// A full dump's runs, in the header's physical memory descriptor.
fn put_runs(head: &mut [u8], plan: &Plan, layout: Layout) -> Result<(), WriteError> {
    let f = layout.fields();
    put(head, f.number_of_runs, 4, plan.ranges.len() as u64);
    for (i, range) in plan.ranges.ranges().iter().enumerate() {
        let at = f.runs + i * 2 * f.word;
        put(
            head,
            at,
            f.word,
            word(layout, "a run's base page", range.start / PAGE_SIZE)?,
        );
        put(head, at + f.word, f.word, range.len() / PAGE_SIZE);
    }
    let required = f.header_len + plan.ranges.total_bytes();
    put(head, f.required_space, 8, required);
    Ok(())
}

/// A bitmap dump's summary and bitmap after the header, padded to
/// HeaderSize.
fn put_bitmap(head: &mut Vec<u8>, plan: &Plan, layout: Layout) -> Result<(), WriteError> {
    let f = layout.fields();
    let total_pages = plan.ranges.total_bytes() / PAGE_SIZE;
    // Whole 32-bit words of bits: kdmp-parser and rizin read BitmapSize / 8
    // bytes, so a size that is not a multiple of 8 would lose the top pages
    // there.
    let bits = (plan.ranges.end() / PAGE_SIZE).next_multiple_of(32);
    let bitmap_len = bits / 8;
    if bitmap_len > MAX_BITMAP_BYTES {
        return Err(plan_error(format!(
            "memory up to {:#x} needs a {bitmap_len}-byte page bitmap, more than the {MAX_BITMAP_BYTES} pmem writes",
            plan.ranges.end()
        )));
    }
    let header_size = (f.header_len + SUMMARY_LEN + bitmap_len).next_multiple_of(PAGE_SIZE);
    put(
        head,
        f.required_space,
        8,
        header_size + plan.ranges.total_bytes(),
    );
    head.resize(header_size as usize, 0);
    let summary = f.header_len as usize;
    head[summary..summary + 4].copy_from_slice(SUMMARY_SIGNATURE_FULL);
    head[summary + 4..summary + 8].copy_from_slice(SUMMARY_VALID_DUMP);
    put(head, summary + 0x20, 8, header_size);
    put(head, summary + 0x28, 8, total_pages);
    put(head, summary + 0x30, 8, bits);
    let bitmap = &mut head[summary + SUMMARY_LEN as usize..];
    for range in plan.ranges.ranges() {
        for page in range.start / PAGE_SIZE..range.end / PAGE_SIZE {
            bitmap[(page / 8) as usize] |= 1 << (page % 8);
        }
    }
    Ok(())
}

/// A crash dump opened for reading: full (DumpType 1) and bitmap
/// (DumpType 5) dumps in both layouts.
#[derive(Debug)]
pub struct DmpReader {
    mapped: MappedFile,
    metadata: ImageMetadata,
    layout: Layout,
    kind: DumpKind,
}

mapped_file_reader!(DmpReader, Format::Dmp);

impl DmpReader {
    /// Reads the signature and the header, finds the pages (the header's
    /// runs or the summary's bitmap), and maps them onto the page data.
    pub fn open(path: &Path, file: impl Into<ImageFile>) -> Result<DmpReader, FormatError> {
        let file: ImageFile = file.into();
        let image = Parsing::new(path, &file, Format::Dmp)?;
        let layout = read_signature(image)?;
        let head = read_header(image, layout)?;
        let (kind, map, data_start) = page_runs(image, &head, layout)?;
        let pieces = place_pages(image, &map, data_start)?;
        let map = FileMap::new(pieces).map_err(|e| image.corrupt(0, e.to_string()))?;
        Ok(DmpReader {
            mapped: MappedFile::new(path, file, map),
            metadata: ImageMetadata {
                arch: Some(layout.arch()),
                windows: Some(windows_of(&head, layout)),
                ..ImageMetadata::default()
            },
            layout,
            kind,
        })
    }

    /// How the dump lists its pages (runs or bitmap).
    pub fn kind(&self) -> DumpKind {
        self.kind
    }

    /// The header layout the signature named.
    pub fn layout(&self) -> Layout {
        self.layout
    }
}

/// The layout the signature ("PAGE" "DU64" or "PAGE" "DUMP") names.
fn read_signature(image: Parsing<'_>) -> Result<Layout, FormatError> {
    let len = image.len;
    if len < 8 {
        return Err(image.corrupt(0, format!("truncated: {len} bytes")));
    }
    let mut magic = [0u8; 8];
    image.read_exact_at(0, &mut magic)?;
    if &magic[..4] != b"PAGE" {
        return Err(image.corrupt(0, "no \"PAGE\" signature"));
    }
    match &magic[4..] {
        b"DU64" => Ok(Layout::Bits64),
        b"DUMP" => Ok(Layout::Bits32),
        other => Err(image.corrupt(
            4,
            format!("unknown ValidDump {:?}", String::from_utf8_lossy(other)),
        )),
    }
}

/// The whole dump header of `layout`.
fn read_header(image: Parsing<'_>, layout: Layout) -> Result<Vec<u8>, FormatError> {
    let (f, len) = (layout.fields(), image.len);
    if len < f.header_len {
        return Err(image.corrupt(
            0,
            format!(
                "truncated header: the file has {len} bytes, the header needs {}",
                f.header_len
            ),
        ));
    }
    let mut head = vec![0u8; f.header_len as usize];
    image.read_exact_at(0, &mut head)?;
    Ok(head)
}

/// The dump's kind, its memory and where page data starts.
fn page_runs(
    image: Parsing<'_>,
    head: &[u8],
    layout: Layout,
) -> Result<(DumpKind, MemoryMap, u64), FormatError> {
    let f = layout.fields();
    let (kind, (map, data_start)) = match uint_le(head, f.dump_type, 4) as u32 {
        DUMP_TYPE_FULL => (DumpKind::Full, full_runs(image, head, layout)?),
        DUMP_TYPE_BITMAP => (DumpKind::Bitmap, bitmap_runs(image, layout)?),
        other => {
            return Err(FormatError::Unsupported {
                path: image.path.into(),
                offset: f.dump_type as u64,
                reason: format!(
                    "crash dump type {other} is not a full memory dump (only types 1 and 5 hold all physical memory)"
                ),
            })
        }
    };
    if map.is_empty() {
        return Err(image.corrupt(f.number_of_runs as u64, "the dump lists no pages"));
    }
    Ok((kind, map, data_start))
}

/// Where each range's pages are: back to back from `data_start`, inside
/// the file.
fn place_pages(
    image: Parsing<'_>,
    map: &MemoryMap,
    data_start: u64,
) -> Result<Vec<FilePiece>, FormatError> {
    let len = image.len;
    let mut pieces = Vec::with_capacity(map.len());
    let mut at = data_start;
    for &range in map.ranges() {
        pieces.push(FilePiece {
            phys: range,
            file_offset: at,
        });
        at = at
            .checked_add(range.len())
            .ok_or_else(|| image.corrupt(0, "page data past 2^64 bytes"))?;
    }
    if at > len {
        return Err(image.corrupt(
            len,
            format!("the page data ends at {at:#x} but the file ends at {len:#x}: truncated"),
        ));
    }
    Ok(pieces)
}

/// The Windows kernel facts the header records.
fn windows_of(head: &[u8], layout: Layout) -> WindowsMetadata {
    let f = layout.fields();
    let minor = uint_le(head, 0xC, 4);
    let major = uint_le(head, 0x8, 4) as u32;
    let marker = if major == MAJOR_CHECKED {
        0xC000_0000
    } else {
        0xF000_0000
    };
    WindowsMetadata {
        cr3: uint_le(head, f.dtb, f.word),
        nt_build_number: marker | minor,
        kernel_base: 0,
        kdbg: uint_le(head, f.kdbg, f.word),
        pfn_database: uint_le(head, f.pfn_database, f.word),
        ps_loaded_module_list: uint_le(head, f.ps_loaded_module_list, f.word),
        ps_active_process_head: uint_le(head, f.ps_active_process_head, f.word),
        processors: uint_le(head, f.processors, 4) as u32,
        system_time: uint_le(head, f.system_time, 8),
    }
}

/// The runs of a full dump's header and where page data starts.
fn full_runs(
    image: Parsing<'_>,
    head: &[u8],
    layout: Layout,
) -> Result<(MemoryMap, u64), FormatError> {
    let f = layout.fields();
    let count = uint_le(head, f.number_of_runs, 4);
    if count > layout.max_runs() as u64 {
        return Err(image.corrupt(
            f.number_of_runs as u64,
            format!(
                "NumberOfRuns {count} exceeds the {} the header holds",
                layout.max_runs()
            ),
        ));
    }
    let mut ranges = Vec::with_capacity(count as usize);
    let mut pages = 0u64;
    for i in 0..count as usize {
        let at = f.runs + i * 2 * f.word;
        let base = uint_le(head, at, f.word);
        let count = uint_le(head, at + f.word, f.word);
        let range = base
            .checked_mul(PAGE_SIZE)
            .zip(count.checked_mul(PAGE_SIZE))
            .and_then(|(start, len)| Range::new(start, start.checked_add(len)?))
            .ok_or_else(|| {
                image.corrupt(
                    at as u64,
                    format!("run {i} (base page {base:#x}, {count} pages) is empty or overflows"),
                )
            })?;
        pages += count;
        ranges.push(range);
    }
    let map = MemoryMap::new(ranges).map_err(|e| image.corrupt(f.runs as u64, e.to_string()))?;
    let declared = uint_le(head, f.number_of_pages, f.word);
    if declared != pages {
        return Err(image.corrupt(
            f.number_of_pages as u64,
            format!("NumberOfPages is {declared} but the runs hold {pages} pages"),
        ));
    }
    Ok((map, f.header_len))
}

/// What a bitmap dump's `_SUMMARY_DUMP` says.
struct Summary {
    /// File offset of the summary.
    at: u64,
    /// HeaderSize: where page data starts.
    header_size: u64,
    declared_pages: u64,
    /// BitmapSize, in bits (pages).
    bits: u64,
    bitmap_len: u64,
}

/// Reads and checks the summary after the header.
fn read_summary(image: Parsing<'_>, layout: Layout) -> Result<Summary, FormatError> {
    let (base, len) = (layout.header_len(), image.len);
    if len < base + SUMMARY_LEN {
        return Err(image.corrupt(len, "truncated before the bitmap summary"));
    }
    let mut summary = [0u8; SUMMARY_LEN as usize];
    image.read_exact_at(base, &mut summary)?;
    if !matches!(&summary[..4], b"SDMP" | b"FDMP") {
        return Err(image.corrupt(
            base,
            format!(
                "bitmap summary signature {:?} is neither SDMP nor FDMP",
                String::from_utf8_lossy(&summary[..4])
            ),
        ));
    }
    // "DU64" (the 64-bit header's own ValidDump) is what older pmem builds
    // wrote here.
    let valid = &summary[4..8];
    if valid != SUMMARY_VALID_DUMP && valid != layout.fields().valid_dump {
        return Err(image.corrupt(
            base + 4,
            format!(
                "bitmap summary ValidDump {:?} is not DUMP",
                String::from_utf8_lossy(valid)
            ),
        ));
    }
    let header_size = uint_le(&summary, 0x20, 8);
    let bits = uint_le(&summary, 0x30, 8);
    let bitmap_len = bits.div_ceil(32).saturating_mul(4);
    let bitmap_end = base + SUMMARY_LEN + bitmap_len;
    if bitmap_len > MAX_BITMAP_BYTES || bitmap_end > len {
        return Err(image.corrupt(
            base + 0x30,
            format!("BitmapSize {bits} bits needs {bitmap_len} bytes past the end of the file"),
        ));
    }
    if header_size < bitmap_end || header_size > len {
        return Err(image.corrupt(
            base + 0x20,
            format!(
                "HeaderSize {header_size:#x} lies before the end of the bitmap ({bitmap_end:#x}) or past the end of the file"
            ),
        ));
    }
    Ok(Summary {
        at: base,
        header_size,
        declared_pages: uint_le(&summary, 0x28, 8),
        bits,
        bitmap_len,
    })
}

/// The runs of set bits in a bitmap dump and where page data starts
/// (HeaderSize, an absolute file offset, as Volatility 3 reads it).
fn bitmap_runs(image: Parsing<'_>, layout: Layout) -> Result<(MemoryMap, u64), FormatError> {
    let summary = read_summary(image, layout)?;
    let mut bitmap = vec![0u8; summary.bitmap_len as usize];
    image.read_exact_at(summary.at + SUMMARY_LEN, &mut bitmap)?;
    let (ranges, pages) = set_pages(&bitmap, summary.bits);
    let declared_pages = summary.declared_pages;
    if pages != declared_pages {
        return Err(image.corrupt(
            summary.at + 0x28,
            format!("the summary says {declared_pages} pages but the bitmap marks {pages}"),
        ));
    }
    let map = MemoryMap::new(ranges).expect("ascending bits give sorted ranges");
    Ok((map, summary.header_size))
}

/// The ranges of the pages whose bits are set among the first `bits`, and
/// how many pages that is.
fn set_pages(bitmap: &[u8], bits: u64) -> (Vec<Range>, u64) {
    let mut ranges: Vec<Range> = Vec::new();
    let mut pages = 0u64;
    let mut page = 0u64;
    // Walk 32-bit words so that empty and full words cost one step each.
    for word in bitmap.chunks_exact(4) {
        let word = u32_le(word, 0);
        for bit in 0..32 {
            let p = page + bit;
            if p >= bits {
                break;
            }
            let set = match word {
                0 => false,
                u32::MAX => true,
                w => w & (1 << bit) != 0,
            };
            if !set {
                continue;
            }
            pages += 1;
            let start = p * PAGE_SIZE;
            match ranges.last_mut() {
                Some(last) if last.end == start => last.end += PAGE_SIZE,
                _ => ranges.push(Range {
                    start,
                    end: start + PAGE_SIZE,
                }),
            }
        }
        page += 32;
    }
    (ranges, pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::u64_le;
    use crate::test_util::map;
    use crate::ImageReader;
    use pmem_core::sink::HashingSink;
    use pmem_core::PhysicalMemory;

    fn windows() -> WindowsMetadata {
        WindowsMetadata {
            cr3: 0x1aa000,
            nt_build_number: 0xF000_4A61,
            kernel_base: 0xffff_f800_1200_0000,
            kdbg: 0xffff_f800_12c0_0000,
            pfn_database: 0xffff_c000_0000_0000,
            ps_loaded_module_list: 0xffff_f800_12e2_a2a0,
            ps_active_process_head: 0xffff_f800_12e1_e0a0,
            processors: 4,
            system_time: 133_485_408_000_000_000,
        }
    }

    fn plan(ranges: &[(u64, u64)], arch: Arch) -> Plan {
        let mut plan = Plan::new(map(ranges), arch);
        plan.windows = Some(windows());
        plan
    }

    /// Writes a dump of `plan` whose page `n` is filled with byte `n + 1`.
    fn write(plan: &Plan, kind: Option<DumpKind>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.dmp");
        let sink = Box::new(HashingSink::file(File::create(&path).unwrap()));
        let mut w: Box<dyn ImageWriter> = Box::new(match kind {
            Some(k) => DmpWriter::with_kind(sink, k),
            None => DmpWriter::new(sink),
        });
        w.begin(plan).unwrap();
        for r in plan.ranges.ranges() {
            for page in r.start / PAGE_SIZE..r.end / PAGE_SIZE {
                let fill = [(page + 1) as u8; PAGE_SIZE as usize];
                w.write_chunk(page * PAGE_SIZE, Chunk::Data(&fill)).unwrap();
            }
        }
        w.finish().unwrap();
        (dir, path)
    }

    fn check_pages(reader: &mut DmpReader, plan: &Plan) {
        for r in plan.ranges.ranges() {
            for page in r.start / PAGE_SIZE..r.end / PAGE_SIZE {
                let mut buf = [0u8; PAGE_SIZE as usize];
                reader.read_at(page * PAGE_SIZE, &mut buf).unwrap();
                assert!(buf.iter().all(|&b| b == (page + 1) as u8), "page {page}");
            }
        }
    }

    #[test]
    fn full_dump_header_bytes() {
        let plan = plan(&[(0x1000, 0x3000), (0x10_0000, 0x10_1000)], Arch::X86_64);
        let (_dir, path) = write(&plan, None);
        let b = std::fs::read(&path).unwrap();
        assert_eq!(&b[..8], b"PAGEDU64");
        assert_eq!(u32_le(&b, 0x8), 0xF);
        assert_eq!(u32_le(&b, 0xC), 19041);
        assert_eq!(u64_le(&b, 0x10), 0x1aa000);
        assert_eq!(u64_le(&b, 0x18), 0xffff_c000_0000_0000);
        assert_eq!(u64_le(&b, 0x20), 0xffff_f800_12e2_a2a0);
        assert_eq!(u64_le(&b, 0x28), 0xffff_f800_12e1_e0a0);
        assert_eq!(u32_le(&b, 0x30), 0x8664);
        assert_eq!(u32_le(&b, 0x34), 4);
        assert_eq!(u64_le(&b, 0x80), 0xffff_f800_12c0_0000);
        assert_eq!(u32_le(&b, 0x88), 2);
        assert_eq!(u64_le(&b, 0x90), 3);
        assert_eq!((u64_le(&b, 0x98), u64_le(&b, 0xA0)), (1, 2));
        assert_eq!((u64_le(&b, 0xA8), u64_le(&b, 0xB0)), (0x100, 1));
        assert_eq!(u32_le(&b, 0xF98), 1);
        assert_eq!(u64_le(&b, 0xFA0), 0x2000 + 3 * 0x1000);
        assert_eq!(u64_le(&b, 0xFA8), 133_485_408_000_000_000);
        assert_eq!(b.len(), 0x2000 + 3 * 0x1000);
        assert!(b[0x2000..0x3000].iter().all(|&x| x == 2), "page 1 first");
        assert!(
            b[0x4000..].iter().all(|&x| x == 0x101u64 as u8),
            "then page 0x100"
        );
        let mut r = DmpReader::open(&path, File::open(&path).unwrap()).unwrap();
        assert_eq!(r.kind(), DumpKind::Full);
        assert_eq!(r.memory_map(), &plan.ranges);
        assert_eq!(r.metadata().arch, Some(Arch::X86_64));
        let expected = WindowsMetadata {
            kernel_base: 0, // not part of the header
            ..windows()
        };
        assert_eq!(r.metadata().windows, Some(expected));
        check_pages(&mut r, &plan);
    }

    /// The bitmap summary as kdmp-parser 0.7.4 (BMP_HEADER64::LooksGood),
    /// rizin (dmp_specs.h) and Rekall (_BMP_DUMP_HEADER) check it: "FDMP"
    /// (a full-memory bitmap dump, DumpType 5; "SDMP" is the kernel
    /// summary's) then "DUMP" in both layouts, never the header's "DU64";
    /// BitmapSize a multiple of 32, since kdmp-parser and rizin read
    /// BitmapSize / 8 bytes and would drop the top pages otherwise.
    #[test]
    fn bitmap_summary_fields_windbg_readers_check() {
        // The last page is pfn 0x1002: bit 0x1002 lies past BitmapSize / 8
        // bytes unless BitmapSize is rounded up.
        let ranges: Vec<(u64, u64)> = (0..50u64)
            .map(|i| (0x1000 + i * 0x2000, 0x2000 + i * 0x2000))
            .chain([(0x100_0000, 0x100_3000)])
            .collect();
        for (arch, summary) in [(Arch::X86_64, 0x2000usize), (Arch::X86, 0x1000)] {
            let mut plan = plan(&ranges, arch);
            if arch == Arch::X86 {
                plan.windows = Some(WindowsMetadata {
                    kdbg: 0x8273_0c28,
                    pfn_database: 0x8400_0000,
                    ps_loaded_module_list: 0x8274_4850,
                    ps_active_process_head: 0x8273_3f18,
                    ..windows()
                });
            }
            let (_dir, path) = write(&plan, Some(DumpKind::Bitmap));
            let b = std::fs::read(&path).unwrap();
            assert_eq!(&b[summary..summary + 4], b"FDMP", "{arch:?} Signature");
            assert_eq!(&b[summary + 4..summary + 8], b"DUMP", "{arch:?} ValidDump");
            assert_eq!(u32_le(&b, summary + 8), 0, "{arch:?} DumpOptions");
            let bits = u64_le(&b, summary + 0x30);
            assert_eq!(
                bits, 0x1020,
                "{arch:?} BitmapSize: pfn 0x1003 rounded up to 32"
            );
            // Every set bit lies within the BitmapSize / 8 bytes a
            // byte-wise reader takes.
            let bitmap = &b[summary + 0x38..summary + 0x38 + (bits / 8) as usize];
            let set: u64 = bitmap.iter().map(|x| u64::from(x.count_ones())).sum();
            assert_eq!(set, u64_le(&b, summary + 0x28), "{arch:?} Pages");
            assert_eq!(set, 53);
            let header_size = u64_le(&b, summary + 0x20);
            assert_eq!(header_size % PAGE_SIZE, 0);
            assert!(header_size >= (summary as u64) + 0x38 + bits / 8);
            assert_eq!(b.len() as u64, header_size + 53 * PAGE_SIZE);
            let mut r = DmpReader::open(&path, File::open(&path).unwrap()).unwrap();
            assert_eq!(r.memory_map().total_bytes(), 53 * PAGE_SIZE);
            check_pages(&mut r, &plan);
        }
    }

    /// Dumps pmem wrote before the summary matched WindbG-grade readers
    /// ("SDMP" + the header's "DU64", BitmapSize = highest pfn + 1) still
    /// open; any other ValidDump is refused at its offset.
    #[test]
    fn older_pmem_bitmap_dumps_still_open() {
        let ranges: Vec<(u64, u64)> = (0..50u64)
            .map(|i| (0x1000 + i * 0x2000, 0x2000 + i * 0x2000))
            .collect();
        let plan = plan(&ranges, Arch::X86_64);
        let (_dir, path) = write(&plan, None);
        let mut b = std::fs::read(&path).unwrap();
        b[0x2000..0x2008].copy_from_slice(b"SDMPDU64");
        b[0x2030..0x2038].copy_from_slice(&100u64.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.dmp");
        std::fs::write(&old, &b).unwrap();
        let mut r = DmpReader::open(&old, File::open(&old).unwrap()).unwrap();
        assert_eq!(r.memory_map(), &plan.ranges);
        check_pages(&mut r, &plan);
        b[0x2004..0x2008].copy_from_slice(b"XXXX");
        assert_eq!(open_bytes(&b).unwrap_err().offset(), 0x2004);
    }

    #[test]
    fn many_runs_make_a_bitmap_dump() {
        // 50 one-page runs with one-page gaps, plus a run adjacent to
        // another (the bitmap merges them).
        let mut ranges: Vec<(u64, u64)> = (0..50u64)
            .map(|i| (0x1000 + i * 0x2000, 0x2000 + i * 0x2000))
            .collect();
        ranges.push((0x100_0000, 0x100_2000));
        let plan = plan(&ranges, Arch::X86_64);
        let (_dir, path) = write(&plan, None);
        let b = std::fs::read(&path).unwrap();
        assert_eq!(u32_le(&b, 0xF98), 5);
        assert_eq!(u32_le(&b, 0x88), 0, "the bitmap is the map");
        assert_eq!(&b[0x2000..0x2008], b"FDMPDUMP");
        let header_size = u64_le(&b, 0x2020);
        let bits = u64_le(&b, 0x2030);
        assert_eq!(bits, 0x1020);
        assert_eq!(u64_le(&b, 0x2028), 52);
        assert_eq!(
            header_size,
            (0x2000u64 + 0x38 + bits / 8).next_multiple_of(0x1000)
        );
        assert_eq!(b.len() as u64, header_size + 52 * 0x1000);
        assert_eq!(u64_le(&b, 0xFA0), b.len() as u64);
        // Bit 1 (page 1) set, bit 0 and 2 clear.
        assert_eq!(b[0x2038] & 0b111, 0b010);
        let mut r = DmpReader::open(&path, File::open(&path).unwrap()).unwrap();
        assert_eq!(r.kind(), DumpKind::Bitmap);
        assert_eq!(r.memory_map().len(), 51);
        assert_eq!(r.memory_map().total_bytes(), plan.ranges.total_bytes());
        check_pages(&mut r, &plan);
    }

    #[test]
    fn forced_bitmap_and_32_bit_layouts() {
        let plan64 = plan(&[(0, 0x2000), (0x5000, 0x6000)], Arch::X86_64);
        let (_d, path) = write(&plan64, Some(DumpKind::Bitmap));
        let mut r = DmpReader::open(&path, File::open(&path).unwrap()).unwrap();
        assert_eq!(r.kind(), DumpKind::Bitmap);
        check_pages(&mut r, &plan64);

        let mut plan32 = plan(
            &[(0x1000, 0x3000), (0x1_0000_0000, 0x1_0000_1000)],
            Arch::X86,
        );
        plan32.windows = Some(WindowsMetadata {
            cr3: 0x185000,
            kdbg: 0x8273_0c28,
            pfn_database: 0x8400_0000,
            ps_loaded_module_list: 0x8274_4850,
            ps_active_process_head: 0x8273_3f18,
            ..windows()
        });
        for kind in [DumpKind::Full, DumpKind::Bitmap] {
            let (_d, path) = write(&plan32, Some(kind));
            let b = std::fs::read(&path).unwrap();
            assert_eq!(&b[..8], b"PAGEDUMP");
            assert_eq!(u32_le(&b, 0x10), 0x185000);
            assert_eq!(u32_le(&b, 0x20), 0x14C);
            assert_eq!(u32_le(&b, 0x60), 0x8273_0c28);
            assert_eq!(u32_le(&b, 0xF88), kind.dump_type());
            assert_eq!(u64_le(&b, 0xFC0), 133_485_408_000_000_000);
            if kind == DumpKind::Full {
                assert_eq!(u32_le(&b, 0x64), 2);
                assert_eq!(u32_le(&b, 0x68), 3);
                assert_eq!((u32_le(&b, 0x6C), u32_le(&b, 0x70)), (1, 2));
                assert_eq!((u32_le(&b, 0x74), u32_le(&b, 0x78)), (0x10_0000, 1));
                assert_eq!(b.len(), 0x1000 + 3 * 0x1000);
            } else {
                assert_eq!(&b[0x1000..0x1008], b"FDMPDUMP");
            }
            let mut r = DmpReader::open(&path, File::open(&path).unwrap()).unwrap();
            assert_eq!(r.metadata().arch, Some(Arch::X86));
            assert_eq!(r.metadata().windows.unwrap().cr3, 0x185000);
            check_pages(&mut r, &plan32);
        }
        // A 64-bit kernel address cannot go into a 32-bit header.
        let mut bad = plan32.clone();
        bad.windows = Some(windows());
        let sink = Box::new(HashingSink::stream(Box::new(std::io::sink())));
        let err = DmpWriter::new(sink).begin(&bad).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }

    #[test]
    fn max_runs() {
        assert_eq!(Layout::Bits64.max_runs(), 42);
        assert_eq!(Layout::Bits32.max_runs(), 86);
        let ranges: Vec<(u64, u64)> = (0..42u64)
            .map(|i| (i * 0x2000, i * 0x2000 + 0x1000))
            .collect();
        assert_eq!(
            u32_le(&header(&plan(&ranges, Arch::X86_64), None).unwrap(), 0xF98),
            1
        );
        let ranges: Vec<(u64, u64)> = (0..43u64)
            .map(|i| (i * 0x2000, i * 0x2000 + 0x1000))
            .collect();
        assert_eq!(
            u32_le(&header(&plan(&ranges, Arch::X86_64), None).unwrap(), 0xF98),
            5
        );
        assert!(header(&plan(&ranges, Arch::X86_64), Some(DumpKind::Full)).is_err());
    }

    #[test]
    fn plans_a_dump_cannot_hold() {
        let mut no_meta = plan(&[(0, 0x1000)], Arch::X86_64);
        no_meta.windows = None;
        let err = header(&no_meta, None).unwrap_err().to_string();
        assert!(err.contains("CR3") && err.contains("--cr3"), "{err}");
        let err = header(&plan(&[(0, 0x1800)], Arch::X86_64), None).unwrap_err();
        assert!(err.to_string().contains("page-aligned"), "{err}");
        assert!(header(&plan(&[(0, 0x1000)], Arch::Aarch64), None).is_err());
        let huge = plan(&[(1 << 50, (1 << 50) + 0x1000)], Arch::X86_64);
        assert!(header(&huge, Some(DumpKind::Bitmap)).is_err());
        assert!(header(&huge, Some(DumpKind::Full)).is_ok());
    }

    fn open_bytes(bytes: &[u8]) -> Result<DmpReader, FormatError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dmp");
        std::fs::write(&path, bytes).unwrap();
        DmpReader::open(&path, File::open(&path).unwrap())
    }

    #[test]
    fn corrupt_dumps_are_refused_with_offsets() {
        let plan = plan(&[(0x1000, 0x3000), (0x10_0000, 0x10_1000)], Arch::X86_64);
        let (_dir, path) = write(&plan, None);
        let good = std::fs::read(&path).unwrap();
        let mutate = |at: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            open_bytes(&b)
        };
        assert_eq!(mutate(4, b"XXXX").unwrap_err().offset(), 4);
        assert!(matches!(
            mutate(0xF98, &2u32.to_le_bytes()),
            Err(FormatError::Unsupported { offset: 0xF98, .. })
        ));
        assert_eq!(
            mutate(0x88, &43u32.to_le_bytes()).unwrap_err().offset(),
            0x88
        );
        assert_eq!(
            mutate(0x90, &4u64.to_le_bytes()).unwrap_err().offset(),
            0x90
        );
        // Runs out of order.
        assert_eq!(
            mutate(0xA8, &0u64.to_le_bytes()).unwrap_err().offset(),
            0x98
        );
        // A run whose address overflows.
        assert!(mutate(0xA8, &u64::MAX.to_le_bytes()).is_err());
        // Truncated page data and header.
        let err = open_bytes(&good[..good.len() - 1]).unwrap_err();
        assert_eq!(err.offset(), good.len() as u64 - 1);
        assert!(open_bytes(&good[..0x1fff]).is_err());
        assert!(open_bytes(b"PAGE").is_err());

        let many: Vec<(u64, u64)> = (0..50u64)
            .map(|i| (i * 0x2000, i * 0x2000 + 0x1000))
            .collect();
        let (_dir, path) = write(&super::tests::plan(&many, Arch::X86_64), None);
        let good = std::fs::read(&path).unwrap();
        let mutate = |at: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            open_bytes(&b)
        };
        assert_eq!(mutate(0x2000, b"ABCD").unwrap_err().offset(), 0x2000);
        assert_eq!(
            mutate(0x2028, &49u64.to_le_bytes()).unwrap_err().offset(),
            0x2028
        );
        assert_eq!(
            mutate(0x2020, &0x10u64.to_le_bytes()).unwrap_err().offset(),
            0x2020
        );
        assert!(mutate(0x2030, &u64::MAX.to_le_bytes()).is_err());
        // More bits set than pages declared.
        assert_eq!(mutate(0x2038 + 5, &[0xff]).unwrap_err().offset(), 0x2028);
    }
}
