//! Mach-O 64-bit core files (`MH_CORE`), the format OSXPMem wrote on Macs.
//!
//! Layout written: `mach_header_64` {MH_MAGIC_64, CPU_TYPE_X86_64 or
//! CPU_TYPE_ARM64, MH_CORE}, one `LC_SEGMENT_64` per range (vmaddr = physical
//! start, vmsize = filesize = length, nsects 0, segname "System RAM"), then
//! `LC_NOTE` commands carrying the kernel's VMCOREINFO, pmem's metadata
//! JSON and the symbol bundle, the notes' bytes, and each range's data at a
//! page-aligned file offset in ascending address order.
//!
//! OSXPMem itself put data right after the load commands (not page-aligned),
//! listed unreadable EFI ranges as segments with fileoff/filesize 0/0 and
//! stored the EFI type in the segment flags; the reader accepts all of that:
//! memory is what the segments with file data describe.

use crate::bytes::{u32_le, u64_le};
use crate::image_file::Parsing;
use crate::laid_out::DataLayout;
use crate::reader::{mapped_file_reader, MappedFile};
use crate::write::{plan_error, plan_symbols};
use crate::{Format, FormatError, ImageFile, ImageMetadata, LaidOutWriter};
use pmem_core::{Arch, ByteSink, FileMap, FilePiece, Plan, Range, WriteError, PAGE_SIZE};
#[cfg(test)]
use std::fs::File;
use std::path::Path;

/// `mach_header_64` magic (little-endian host).
pub const MH_MAGIC_64: u32 = 0xfeed_facf;
/// The 32-bit magic: recognised only to refuse it clearly.
pub const MH_MAGIC: u32 = 0xfeed_face;
/// `filetype` of a core file.
pub const MH_CORE: u32 = 4;
/// `cputype` of x86-64 (`CPU_ARCH_ABI64 | CPU_TYPE_X86`).
pub const CPU_TYPE_X86_64: u32 = 0x0100_0007;
/// `cputype` of arm64 (`CPU_ARCH_ABI64 | CPU_TYPE_ARM`).
pub const CPU_TYPE_ARM64: u32 = 0x0100_000c;
/// CPU_SUBTYPE_I386_ALL, what OSXPMem wrote for x86_64.
pub const CPU_SUBTYPE_X86_ALL: u32 = 3;
/// `cpusubtype` written for arm64.
pub const CPU_SUBTYPE_ARM64_ALL: u32 = 0;
/// Load command of a 64-bit segment: one per range of memory.
pub const LC_SEGMENT_64: u32 = 0x19;
/// Load command of a note (`note_command`): VMCOREINFO, pmem metadata and
/// the symbol bundle.
pub const LC_NOTE: u32 = 0x31;

/// Bytes of `mach_header_64`.
pub const HEADER_LEN: u64 = 32;
/// Bytes of a `segment_command_64` without sections.
pub const SEGMENT_LEN: u64 = 72;
/// Bytes of a `note_command`.
pub const NOTE_LEN: u64 = 40;
/// Name of every segment pmem writes: the plan holds readable RAM only.
pub const SEGNAME: &[u8] = b"System RAM";
/// `data_owner` of the LC_NOTE holding the kernel's VMCOREINFO.
pub const NOTE_VMCOREINFO: &[u8] = b"VMCOREINFO";
/// `data_owner` of the LC_NOTE holding pmem's metadata JSON.
pub const NOTE_PMEM_METADATA: &[u8] = b"pmem.metadata";
/// `data_owner` of the LC_NOTE holding the symbol bundle (opaque bytes).
pub const NOTE_PMEM_SYMBOLS: &[u8] = b"pmem.symbols";
/// Largest load command area and note read: real ones are kilobytes, and
/// both are read whole into memory.
pub const MAX_COMMANDS: u64 = 64 << 20;
/// Largest note read, in bytes (see [`MAX_COMMANDS`]), but for the symbol
/// bundle's: that one may have up to [`crate::MAX_SYMBOLS`].
pub const MAX_NOTE: u64 = 16 << 20;

/// Largest data of the note owned by `owner`, written or read.
fn note_limit(owner: &[u8]) -> u64 {
    if owner == NOTE_PMEM_SYMBOLS {
        crate::MAX_SYMBOLS
    } else {
        MAX_NOTE
    }
}

fn cpu_type(arch: Arch) -> Result<(u32, u32), WriteError> {
    match arch {
        Arch::X86_64 => Ok((CPU_TYPE_X86_64, CPU_SUBTYPE_X86_ALL)),
        Arch::Aarch64 => Ok((CPU_TYPE_ARM64, CPU_SUBTYPE_ARM64_ALL)),
        other => Err(plan_error(format!(
            "a Mach-O core holds x86_64 or arm64 memory, not {}",
            other.name()
        ))),
    }
}

/// A writer streaming a Mach-O core: the layout is fixed in `begin`, after
/// which bytes only ever go forward.
pub fn writer(sink: Box<dyn ByteSink>) -> LaidOutWriter {
    LaidOutWriter::new(Format::Macho, layout, sink)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_name(out: &mut Vec<u8>, name: &[u8]) {
    let mut field = [0u8; 16];
    field[..name.len()].copy_from_slice(name);
    out.extend_from_slice(&field);
}

/// Header, load commands and note bytes (the symbol bundle's last), and
/// each range's data offset.
fn layout(plan: &Plan) -> Result<DataLayout<'_>, WriteError> {
    let (cputype, cpusubtype) = cpu_type(plan.arch)?;
    let mut notes: Vec<(&[u8], &[u8])> = Vec::new();
    if let Some(v) = &plan.vmcoreinfo {
        notes.push((NOTE_VMCOREINFO, v));
    }
    if let Some(json) = &plan.metadata_json {
        notes.push((NOTE_PMEM_METADATA, json.as_bytes()));
    }
    if let Some(symbols) = plan_symbols(plan)? {
        notes.push((NOTE_PMEM_SYMBOLS, symbols));
    }
    for (owner, data) in &notes {
        let limit = note_limit(owner);
        if data.len() as u64 > limit {
            return Err(plan_error(format!(
                "Mach-O note {} of {} bytes exceeds the {limit}-byte limit",
                String::from_utf8_lossy(owner),
                data.len()
            )));
        }
    }
    let too_many = || {
        plan_error(format!(
            "{} ranges do not fit a Mach-O load command area",
            plan.ranges.len()
        ))
    };
    let ncmds = u32::try_from(plan.ranges.len() + notes.len()).map_err(|_| too_many())?;
    let sizeofcmds = plan.ranges.len() as u64 * SEGMENT_LEN + notes.len() as u64 * NOTE_LEN;
    if sizeofcmds > MAX_COMMANDS {
        return Err(too_many());
    }
    let mut next = HEADER_LEN + sizeofcmds;
    let mut note_offsets = Vec::with_capacity(notes.len());
    for (_, data) in &notes {
        note_offsets.push(next);
        next += data.len() as u64;
    }
    let overflow = || plan_error("the Mach-O image would exceed 2^64 bytes");
    let mut offsets = Vec::with_capacity(plan.ranges.len());
    for range in &plan.ranges {
        let offset = next
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or_else(overflow)?;
        offsets.push(offset);
        next = offset.checked_add(range.len()).ok_or_else(overflow)?;
    }

    let mut head = Vec::with_capacity((HEADER_LEN + sizeofcmds) as usize);
    put_u32(&mut head, MH_MAGIC_64);
    put_u32(&mut head, cputype);
    put_u32(&mut head, cpusubtype);
    put_u32(&mut head, MH_CORE);
    put_u32(&mut head, ncmds);
    put_u32(&mut head, sizeofcmds as u32);
    put_u32(&mut head, 0); // flags
    put_u32(&mut head, 0); // reserved
    for (range, &offset) in plan.ranges.ranges().iter().zip(&offsets) {
        put_u32(&mut head, LC_SEGMENT_64);
        put_u32(&mut head, SEGMENT_LEN as u32);
        put_name(&mut head, SEGNAME);
        put_u64(&mut head, range.start); // vmaddr
        put_u64(&mut head, range.len()); // vmsize
        put_u64(&mut head, offset); // fileoff
        put_u64(&mut head, range.len()); // filesize
        put_u32(&mut head, 7); // maxprot: rwx, like the ELF PT_LOADs
        put_u32(&mut head, 7); // initprot
        put_u32(&mut head, 0); // nsects
        put_u32(&mut head, 0); // flags
    }
    for ((owner, data), &offset) in notes.iter().zip(&note_offsets) {
        put_u32(&mut head, LC_NOTE);
        put_u32(&mut head, NOTE_LEN as u32);
        put_name(&mut head, owner);
        put_u64(&mut head, offset);
        put_u64(&mut head, data.len() as u64);
    }
    // The bundle, when there is one, is the last note: borrowed, not copied.
    let symbols = match notes.last() {
        Some(&(owner, data)) if owner == NOTE_PMEM_SYMBOLS => {
            notes.pop();
            data
        }
        _ => &[],
    };
    for (_, data) in &notes {
        head.extend_from_slice(data);
    }
    Ok(DataLayout {
        head,
        symbols,
        offsets,
    })
}

/// A Mach-O 64-bit little-endian core opened for reading: pmem's output and
/// OSXPMem's.
#[derive(Debug)]
pub struct MachoReader {
    mapped: MappedFile,
    metadata: ImageMetadata,
}

/// A 16-byte name field up to its first NUL.
fn name_at(b: &[u8], at: usize) -> &[u8] {
    let field = &b[at..at + 16];
    let end = field.iter().position(|&c| c == 0).unwrap_or(16);
    &field[..end]
}

struct Load {
    range: Range,
    offset: u64,
    at: u64,
}

impl Load {
    fn piece(&self) -> FilePiece {
        FilePiece {
            phys: self.range,
            file_offset: self.offset,
        }
    }
}

mapped_file_reader!(MachoReader, Format::Macho);

impl MachoReader {
    /// Reads the header, walks the load commands for segments and notes,
    /// and maps each segment's bytes.
    pub fn open(path: &Path, file: impl Into<ImageFile>) -> Result<MachoReader, FormatError> {
        let file: ImageFile = file.into();
        let image = Parsing::new(path, &file, Format::Macho)?.nonempty()?;
        let header = MachHeader::read(image)?;
        let cmds = header.read_commands(image)?;
        let mut loads = Vec::new();
        let mut notes = Notes::default();
        let mut at = 0usize;
        for index in 0..header.ncmds {
            let command = LoadCommand::at(image, &header, &cmds, index, at)?;
            match command.cmd {
                LC_SEGMENT_64 => loads.extend(command.segment(image)?),
                LC_NOTE => notes.read(image, &command)?,
                _ => {}
            }
            at += command.body.len();
        }
        sort_disjoint(image, &mut loads)?;
        let map = FileMap::new(loads.iter().map(Load::piece).collect())
            .map_err(|e| image.corrupt(HEADER_LEN, e.to_string()))?;
        Ok(MachoReader {
            mapped: MappedFile::new(path, file, map),
            metadata: ImageMetadata {
                arch: Some(header.arch),
                metadata_json: notes.metadata_json,
                vmcoreinfo: notes.vmcoreinfo,
                symbols: notes.symbols,
                ..ImageMetadata::default()
            },
        })
    }
}

/// What pmem reads of `mach_header_64`.
struct MachHeader {
    arch: Arch,
    ncmds: u32,
    sizeofcmds: u64,
}

impl MachHeader {
    /// Reads and checks the header: a 64-bit x86_64 or arm64 core file.
    fn read(image: Parsing<'_>) -> Result<MachHeader, FormatError> {
        let len = image.len;
        if len < HEADER_LEN {
            return Err(image.corrupt(0, format!("truncated Mach-O header: the file has {len} bytes, the header needs {HEADER_LEN}")));
        }
        let unsupported = |offset: u64, reason: String| FormatError::Unsupported {
            path: image.path.into(),
            offset,
            reason,
        };
        let mut header = [0u8; HEADER_LEN as usize];
        image.read_exact_at(0, &mut header)?;
        match u32_le(&header, 0) {
            MH_MAGIC_64 => {}
            MH_MAGIC => {
                return Err(unsupported(
                    0,
                    "32-bit Mach-O (MH_MAGIC) images are not supported, only 64-bit".into(),
                ))
            }
            magic => return Err(image.corrupt(0, format!("magic {magic:#x} is not MH_MAGIC_64"))),
        }
        let arch = match u32_le(&header, 4) {
            CPU_TYPE_X86_64 => Arch::X86_64,
            CPU_TYPE_ARM64 => Arch::Aarch64,
            other => {
                return Err(unsupported(
                    4,
                    format!("Mach-O cputype {other:#x} is neither x86_64 nor arm64"),
                ))
            }
        };
        let filetype = u32_le(&header, 12);
        if filetype != MH_CORE {
            return Err(image.corrupt(
                12,
                format!("filetype {filetype} is not MH_CORE ({MH_CORE}): not a memory image"),
            ));
        }
        Ok(MachHeader {
            arch,
            ncmds: u32_le(&header, 16),
            sizeofcmds: u64::from(u32_le(&header, 20)),
        })
    }

    /// The load commands, read whole (at most [`MAX_COMMANDS`] bytes).
    fn read_commands(&self, image: Parsing<'_>) -> Result<Vec<u8>, FormatError> {
        let (sizeofcmds, len) = (self.sizeofcmds, image.len);
        if sizeofcmds > MAX_COMMANDS {
            return Err(image.corrupt(
                20,
                format!("sizeofcmds {sizeofcmds:#x} exceeds the {MAX_COMMANDS:#x}-byte limit"),
            ));
        }
        if HEADER_LEN + sizeofcmds > len {
            return Err(image.corrupt(20, format!("the load commands ({sizeofcmds:#x} bytes) run past the end of the file ({len:#x} bytes): truncated")));
        }
        let mut cmds = vec![0u8; sizeofcmds as usize];
        image.read_exact_at(HEADER_LEN, &mut cmds)?;
        Ok(cmds)
    }
}

/// One load command: its type, its bytes and where it is.
struct LoadCommand<'c> {
    index: u32,
    cmd: u32,
    body: &'c [u8],
    /// File offset of the command.
    file_at: u64,
}

impl<'c> LoadCommand<'c> {
    /// The command `index`, at offset `at` of the commands.
    fn at(
        image: Parsing<'_>,
        header: &MachHeader,
        cmds: &'c [u8],
        index: u32,
        at: usize,
    ) -> Result<LoadCommand<'c>, FormatError> {
        let (ncmds, sizeofcmds) = (header.ncmds, header.sizeofcmds);
        let file_at = HEADER_LEN + at as u64;
        if cmds.len() - at < 8 {
            return Err(image.corrupt(
                file_at,
                format!("load command {index} of {ncmds} lies past sizeofcmds ({sizeofcmds:#x})"),
            ));
        }
        let cmd = u32_le(cmds, at);
        let cmdsize = u32_le(cmds, at + 4) as usize;
        if cmdsize < 8 || cmdsize > cmds.len() - at {
            return Err(image.corrupt(
                file_at,
                format!(
                    "load command {index}: cmdsize {cmdsize:#x} is below 8 or runs past sizeofcmds"
                ),
            ));
        }
        Ok(LoadCommand {
            index,
            cmd,
            body: &cmds[at..at + cmdsize],
            file_at,
        })
    }

    /// The command's body, refused when shorter than the `need` bytes a
    /// command of its `kind` has.
    fn body_of(&self, image: Parsing<'_>, kind: &str, need: u64) -> Result<&'c [u8], FormatError> {
        if (self.body.len() as u64) < need {
            return Err(image.corrupt(
                self.file_at,
                format!(
                    "load command {}: {kind} of {} bytes, needs {need}",
                    self.index,
                    self.body.len()
                ),
            ));
        }
        Ok(self.body)
    }

    /// The memory an `LC_SEGMENT_64` holds; `None` for a segment without
    /// file data (a range OSXPMem could not read).
    fn segment(&self, image: Parsing<'_>) -> Result<Option<Load>, FormatError> {
        let (index, file_at, len) = (self.index, self.file_at, image.len);
        let body = self.body_of(image, "LC_SEGMENT_64", SEGMENT_LEN)?;
        let (vmaddr, fileoff, filesize) = (u64_le(body, 24), u64_le(body, 40), u64_le(body, 48));
        if filesize == 0 {
            return Ok(None);
        }
        let range = vmaddr
            .checked_add(filesize)
            .and_then(|end| Range::new(vmaddr, end))
            .ok_or_else(|| image.corrupt(file_at, format!("load command {index}: segment at {vmaddr:#x} (+{filesize:#x}) runs past 2^64")))?;
        if fileoff.checked_add(filesize).is_none_or(|end| end > len) {
            return Err(image.corrupt(file_at, format!("load command {index}: segment {range} data at file offset {fileoff:#x} (+{filesize:#x}) runs past the end of the file ({len:#x} bytes): truncated")));
        }
        Ok(Some(Load {
            range,
            offset: fileoff,
            at: file_at,
        }))
    }
}

/// The notes pmem reads: the first of each kind wins.
#[derive(Default)]
struct Notes {
    vmcoreinfo: Option<Vec<u8>>,
    metadata_json: Option<String>,
    symbols: Option<Vec<u8>>,
}

impl Notes {
    /// Reads an `LC_NOTE`'s data (at most [`MAX_NOTE`] bytes, or
    /// [`crate::MAX_SYMBOLS`] for the symbol bundle) when it is a note pmem
    /// wants and has not found yet.
    fn read(&mut self, image: Parsing<'_>, command: &LoadCommand<'_>) -> Result<(), FormatError> {
        let (index, file_at, len) = (command.index, command.file_at, image.len);
        let body = command.body_of(image, "LC_NOTE", NOTE_LEN)?;
        let owner = name_at(body, 8);
        let (offset, size) = (u64_le(body, 24), u64_le(body, 32));
        let wanted = (owner == NOTE_VMCOREINFO && self.vmcoreinfo.is_none())
            || (owner == NOTE_PMEM_METADATA && self.metadata_json.is_none())
            || (owner == NOTE_PMEM_SYMBOLS && self.symbols.is_none());
        if !wanted {
            return Ok(());
        }
        let limit = note_limit(owner);
        if size > limit {
            return Err(image.corrupt(file_at, format!("load command {index}: LC_NOTE of {size:#x} bytes exceeds the {limit:#x}-byte limit")));
        }
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(image.corrupt(file_at, format!("load command {index}: LC_NOTE data at {offset:#x} (+{size:#x}) runs past the end of the file: truncated")));
        }
        let mut data = vec![0u8; size as usize];
        image.read_exact_at(offset, &mut data)?;
        if owner == NOTE_VMCOREINFO {
            self.vmcoreinfo = Some(data);
        } else if owner == NOTE_PMEM_SYMBOLS {
            self.symbols = Some(data);
        } else {
            let json = String::from_utf8(data)
                .map_err(|_| image.corrupt(offset, "the pmem metadata note is not UTF-8"))?;
            self.metadata_json = Some(json);
        }
        Ok(())
    }
}

/// Sorts the segments by address and refuses overlapping ones.
fn sort_disjoint(image: Parsing<'_>, loads: &mut [Load]) -> Result<(), FormatError> {
    loads.sort_by_key(|l| l.range.start);
    for pair in loads.windows(2) {
        if pair[1].range.start < pair[0].range.end {
            return Err(image.corrupt(
                pair[1].at,
                format!(
                    "segment {} overlaps segment {}",
                    pair[1].range, pair[0].range
                ),
            ));
        }
    }
    Ok(())
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
        crate::test_util::write_image(Format::Macho, plan)
    }

    fn open_bytes(bytes: &[u8]) -> Result<MachoReader, FormatError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.macho");
        std::fs::write(&path, bytes).unwrap();
        let result = MachoReader::open(&path, File::open(&path).unwrap());
        if let Err(e) = &result {
            assert_eq!(e.path(), path);
        }
        result
    }

    fn seg(i: usize) -> usize {
        (HEADER_LEN + i as u64 * SEGMENT_LEN) as usize
    }

    #[test]
    fn header_bytes() {
        let plan = Plan::new(map(&[(0x1000, 0x1800)]), Arch::X86_64);
        let b = image(&plan);
        #[rustfmt::skip]
        let expected: [u8; 32 + 72] = [
            0xcf, 0xfa, 0xed, 0xfe, 7, 0, 0, 1,  // MH_MAGIC_64, CPU_TYPE_X86_64
            3, 0, 0, 0, 4, 0, 0, 0,              // CPU_SUBTYPE_I386_ALL, MH_CORE
            1, 0, 0, 0, 72, 0, 0, 0,             // ncmds, sizeofcmds
            0, 0, 0, 0, 0, 0, 0, 0,              // flags, reserved
            0x19, 0, 0, 0, 72, 0, 0, 0,          // LC_SEGMENT_64, cmdsize
            b'S', b'y', b's', b't', b'e', b'm', b' ', b'R', b'A', b'M', 0, 0, 0, 0, 0, 0,
            0, 0x10, 0, 0, 0, 0, 0, 0,           // vmaddr
            0, 8, 0, 0, 0, 0, 0, 0,              // vmsize
            0, 0x10, 0, 0, 0, 0, 0, 0,           // fileoff: page-aligned
            0, 8, 0, 0, 0, 0, 0, 0,              // filesize
            7, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(&b[..expected.len()], &expected);
        assert_eq!(b.len(), 0x1800);
        assert!(b[0x1000..].iter().all(|&x| x == 0x11));
    }

    #[test]
    fn arm64_and_refused_arches() {
        let b = image(&Plan::new(map(&[(0, 0x1000)]), Arch::Aarch64));
        assert_eq!(u32_le(&b, 4), CPU_TYPE_ARM64);
        assert_eq!(open_bytes(&b).unwrap().metadata().arch, Some(Arch::Aarch64));
        let sink = HashingSink::stream(Box::new(std::io::sink()));
        let mut w = writer(Box::new(sink));
        let err = w.begin(&Plan::new(map(&[(0, 0x1000)]), Arch::X86));
        assert!(matches!(err, Err(WriteError::Plan(_))));
    }

    /// The layout OSXPMem wrote: data right after the commands, unreadable
    /// ranges as 0/0 segments, the EFI type in the flags.
    #[test]
    fn osxpmem_layout() {
        let mut b = Vec::new();
        let cmds_end = HEADER_LEN + 3 * SEGMENT_LEN;
        for v in [MH_MAGIC_64, CPU_TYPE_X86_64, 3, MH_CORE, 3, 3 * 72, 0, 0] {
            put_u32(&mut b, v);
        }
        let segs: [(&[u8], u64, u64, u64, u32); 3] = [
            (b"Conventional", 0, 0x2000, cmds_end, 7),
            (b"MemoryMappedIO", 0x2000, 0x1000, 0, 11),
            (b"LoaderData", 0x3000, 0x1000, cmds_end + 0x2000, 2),
        ];
        for (name, addr, size, off, ty) in segs {
            put_u32(&mut b, LC_SEGMENT_64);
            put_u32(&mut b, 72);
            put_name(&mut b, name);
            put_u64(&mut b, addr);
            put_u64(&mut b, size);
            put_u64(&mut b, off);
            put_u64(&mut b, if off == 0 { 0 } else { size });
            for v in [0, 0, 0, ty] {
                put_u32(&mut b, v);
            }
        }
        b.extend(std::iter::repeat_n(0xaa, 0x2000));
        b.extend(std::iter::repeat_n(0xbb, 0x1000));
        let mut r = open_bytes(&b).unwrap();
        assert_eq!(r.memory_map(), &map(&[(0, 0x2000), (0x3000, 0x4000)]));
        let mut buf = [0u8; 2];
        r.read_at(0x1fff, &mut buf[..1]).unwrap();
        r.read_at(0x3000, &mut buf[1..]).unwrap();
        assert_eq!(buf, [0xaa, 0xbb]);
    }

    #[test]
    fn notes_round_trip() {
        let mut plan = Plan::new(map(&[(0, 0x1000)]), Arch::X86_64);
        plan.vmcoreinfo = Some(b"OSRELEASE=x\n".to_vec());
        plan.metadata_json = Some("{\"a\":1}".into());
        let r = open_bytes(&image(&plan)).unwrap();
        assert_eq!(r.metadata().vmcoreinfo, plan.vmcoreinfo);
        assert_eq!(r.metadata().metadata_json, plan.metadata_json);
        assert_eq!(r.metadata().symbols, None);
    }

    /// An image with a symbol bundle; the offset of its LC_NOTE (the last
    /// command, after the one segment and the metadata note).
    fn image_with_symbols(symbols: &[u8]) -> (Vec<u8>, usize) {
        let mut plan = Plan::new(map(&[(0, 0x1000)]), Arch::X86_64);
        plan.metadata_json = Some("{}".into());
        plan.symbols = Some(symbols.to_vec());
        (image(&plan), seg(1) + NOTE_LEN as usize)
    }

    #[test]
    fn symbol_bundle_round_trip() {
        let symbols = symbol_bundle();
        let (b, note) = image_with_symbols(&symbols);
        assert_eq!(u32_le(&b, note), LC_NOTE);
        assert_eq!(name_at(&b, note + 8), b"pmem.symbols");
        let mut r = open_bytes(&b).unwrap();
        check_symbols_and_memory(&mut r, &symbols, 0);
        assert_eq!(r.metadata().metadata_json.as_deref(), Some("{}"));
    }

    #[test]
    fn a_symbol_note_claiming_too_much_is_refused() {
        let (b, note) = image_with_symbols(&[7; 100]);
        let size_at = note + 32;
        let refused = |size: u64, says: &str| {
            let mut x = b.clone();
            x[size_at..size_at + 8].copy_from_slice(&size.to_le_bytes());
            let err = open_bytes(&x).unwrap_err();
            assert_eq!(err.offset(), note as u64, "{err}");
            assert!(err.to_string().contains(says), "{err}");
        };
        refused(u64::MAX, "limit");
        refused(crate::MAX_SYMBOLS + 1, "limit");
        // Within the limit, past the end of the file.
        refused(crate::MAX_SYMBOLS, "truncated");
        refused(b.len() as u64, "truncated");
    }

    #[test]
    fn corrupt_and_truncated() {
        let plan = Plan::new(map(&[(0, 0x2000), (0x3000, 0x4000)]), Arch::X86_64);
        let b = image(&plan);
        assert!(matches!(open_bytes(&[]), Err(FormatError::Empty { .. })));
        let err = open_bytes(&b[..20]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = open_bytes(&b[..seg(1) + 10]).unwrap_err();
        assert_eq!(err.offset(), 20);
        let err = open_bytes(&b[..b.len() - 1]).unwrap_err();
        assert_eq!(err.offset(), seg(1) as u64);
        assert!(err.to_string().contains("truncated"), "{err}");
        // A lying sizeofcmds, ncmds and cmdsize.
        let mut x = b.clone();
        x[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(open_bytes(&x).unwrap_err().to_string().contains("limit"));
        let mut x = b.clone();
        x[16..20].copy_from_slice(&1000u32.to_le_bytes());
        assert!(open_bytes(&x)
            .unwrap_err()
            .to_string()
            .contains("sizeofcmds"));
        let mut x = b.clone();
        x[seg(0) + 4..seg(0) + 8].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(open_bytes(&x).unwrap_err().offset(), seg(0) as u64);
        // Overlap, 2^64 overflow.
        let mut x = b.clone();
        x[seg(1) + 24..seg(1) + 32].copy_from_slice(&0x1fffu64.to_le_bytes());
        let err = open_bytes(&x).unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
        let mut x = b.clone();
        x[seg(1) + 24..seg(1) + 32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(open_bytes(&x).unwrap_err().to_string().contains("2^64"));
        // Not a core, 32-bit, foreign CPU.
        let mut x = b.clone();
        x[12] = 2;
        assert!(open_bytes(&x).unwrap_err().to_string().contains("MH_CORE"));
        let mut x = b.clone();
        x[0] = 0xce;
        assert!(matches!(
            open_bytes(&x),
            Err(FormatError::Unsupported { offset: 0, .. })
        ));
        let mut x = b.clone();
        x[4] = 18;
        assert!(matches!(
            open_bytes(&x),
            Err(FormatError::Unsupported { offset: 4, .. })
        ));
    }
}
