//! Mach-O 64-bit core files (`MH_CORE`), the format OSXPMem wrote on Macs.
//!
//! Layout written: `mach_header_64` {MH_MAGIC_64, CPU_TYPE_X86_64 or
//! CPU_TYPE_ARM64, MH_CORE}, one `LC_SEGMENT_64` per range (vmaddr = physical
//! start, vmsize = filesize = length, nsects 0, segname "System RAM"), then
//! `LC_NOTE` commands carrying the kernel's VMCOREINFO and pmem's metadata
//! JSON, the notes' bytes, and each range's data at a page-aligned file
//! offset in ascending address order.
//!
//! OSXPMem itself put data right after the load commands (not page-aligned),
//! listed unreadable EFI ranges as segments with fileoff/filesize 0/0 and
//! stored the EFI type in the segment flags; the reader accepts all of that:
//! memory is what the segments with file data describe.

use crate::{
    corrupt_in, nonempty_len, read_exact_at, Format, FormatError, ImageFile, ImageReader,
    LaidOutWriter, Segments,
};
use pmem_core::{
    Arch, ByteSink, MemoryMap, PhysicalMemory, Plan, Range, ReadError, WriteError, PAGE_SIZE,
};
#[cfg(test)]
use std::fs::File;
use std::path::Path;

pub const MH_MAGIC_64: u32 = 0xfeed_facf;
/// The 32-bit magic: recognised only to refuse it clearly.
pub const MH_MAGIC: u32 = 0xfeed_face;
pub const MH_CORE: u32 = 4;
pub const CPU_TYPE_X86_64: u32 = 0x0100_0007;
pub const CPU_TYPE_ARM64: u32 = 0x0100_000c;
/// CPU_SUBTYPE_I386_ALL, what OSXPMem wrote for x86_64.
pub const CPU_SUBTYPE_X86_ALL: u32 = 3;
pub const CPU_SUBTYPE_ARM64_ALL: u32 = 0;
pub const LC_SEGMENT_64: u32 = 0x19;
pub const LC_NOTE: u32 = 0x31;

pub const HEADER_LEN: u64 = 32;
pub const SEGMENT_LEN: u64 = 72;
pub const NOTE_LEN: u64 = 40;
/// Name of every segment pmem writes: the plan holds readable RAM only.
pub const SEGNAME: &[u8] = b"System RAM";
/// `data_owner` of the LC_NOTE holding the kernel's VMCOREINFO.
pub const NOTE_VMCOREINFO: &[u8] = b"VMCOREINFO";
/// `data_owner` of the LC_NOTE holding pmem's metadata JSON.
pub const NOTE_PMEM_METADATA: &[u8] = b"pmem.metadata";
/// Largest load command area and note read: real ones are kilobytes, and
/// both are read whole into memory.
pub const MAX_COMMANDS: u64 = 64 << 20;
pub const MAX_NOTE: u64 = 16 << 20;

fn plan_error(what: impl Into<String>) -> WriteError {
    WriteError::Plan(what.into())
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

/// Header, load commands and note bytes, and each range's data offset.
fn layout(plan: &Plan) -> Result<(Vec<u8>, Vec<u64>), WriteError> {
    let (cputype, cpusubtype) = cpu_type(plan.arch)?;
    let mut notes: Vec<(&[u8], &[u8])> = Vec::new();
    if let Some(v) = &plan.vmcoreinfo {
        notes.push((NOTE_VMCOREINFO, v));
    }
    if let Some(json) = &plan.metadata_json {
        notes.push((NOTE_PMEM_METADATA, json.as_bytes()));
    }
    for (owner, data) in &notes {
        if data.len() as u64 > MAX_NOTE {
            return Err(plan_error(format!(
                "Mach-O note {} of {} bytes exceeds the {MAX_NOTE}-byte limit",
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
    for (_, data) in &notes {
        head.extend_from_slice(data);
    }
    Ok((head, offsets))
}

/// A Mach-O 64-bit little-endian core opened for reading: pmem's output and
/// OSXPMem's.
#[derive(Debug)]
pub struct MachoReader {
    segments: Segments,
    arch: Arch,
    metadata_json: Option<String>,
    vmcoreinfo: Option<Vec<u8>>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
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

impl MachoReader {
    pub fn open(path: &Path, file: impl Into<ImageFile>) -> Result<MachoReader, FormatError> {
        let file: ImageFile = file.into();
        let len = nonempty_len(path, &file)?;
        let corrupt = corrupt_in(path, Format::Macho);
        if len < HEADER_LEN {
            return Err(corrupt(0, format!("truncated Mach-O header: the file has {len} bytes, the header needs {HEADER_LEN}")));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        read_exact_at(path, &file, 0, &mut header)?;
        match u32_at(&header, 0) {
            MH_MAGIC_64 => {}
            MH_MAGIC => {
                return Err(FormatError::Unsupported {
                    path: path.into(),
                    offset: 0,
                    reason: "32-bit Mach-O (MH_MAGIC) images are not supported, only 64-bit".into(),
                })
            }
            magic => return Err(corrupt(0, format!("magic {magic:#x} is not MH_MAGIC_64"))),
        }
        let arch = match u32_at(&header, 4) {
            CPU_TYPE_X86_64 => Arch::X86_64,
            CPU_TYPE_ARM64 => Arch::Aarch64,
            other => {
                return Err(FormatError::Unsupported {
                    path: path.into(),
                    offset: 4,
                    reason: format!("Mach-O cputype {other:#x} is neither x86_64 nor arm64"),
                })
            }
        };
        let filetype = u32_at(&header, 12);
        if filetype != MH_CORE {
            return Err(corrupt(
                12,
                format!("filetype {filetype} is not MH_CORE ({MH_CORE}): not a memory image"),
            ));
        }
        let ncmds = u32_at(&header, 16);
        let sizeofcmds = u64::from(u32_at(&header, 20));
        if sizeofcmds > MAX_COMMANDS {
            return Err(corrupt(
                20,
                format!("sizeofcmds {sizeofcmds:#x} exceeds the {MAX_COMMANDS:#x}-byte limit"),
            ));
        }
        if HEADER_LEN + sizeofcmds > len {
            return Err(corrupt(20, format!("the load commands ({sizeofcmds:#x} bytes) run past the end of the file ({len:#x} bytes): truncated")));
        }
        let mut cmds = vec![0u8; sizeofcmds as usize];
        read_exact_at(path, &file, HEADER_LEN, &mut cmds)?;

        let mut loads = Vec::new();
        let mut vmcoreinfo = None;
        let mut metadata_json = None;
        let mut at = 0usize;
        for index in 0..ncmds {
            let file_at = HEADER_LEN + at as u64;
            if cmds.len() - at < 8 {
                return Err(corrupt(
                    file_at,
                    format!(
                        "load command {index} of {ncmds} lies past sizeofcmds ({sizeofcmds:#x})"
                    ),
                ));
            }
            let cmd = u32_at(&cmds, at);
            let cmdsize = u32_at(&cmds, at + 4) as usize;
            if cmdsize < 8 || cmdsize > cmds.len() - at {
                return Err(corrupt(file_at, format!("load command {index}: cmdsize {cmdsize:#x} is below 8 or runs past sizeofcmds")));
            }
            let body = &cmds[at..at + cmdsize];
            match cmd {
                LC_SEGMENT_64 => {
                    if cmdsize < SEGMENT_LEN as usize {
                        return Err(corrupt(file_at, format!("load command {index}: LC_SEGMENT_64 of {cmdsize} bytes, needs {SEGMENT_LEN}")));
                    }
                    let (vmaddr, fileoff, filesize) =
                        (u64_at(body, 24), u64_at(body, 40), u64_at(body, 48));
                    // Segments without file data are ranges OSXPMem could not read.
                    if filesize == 0 {
                        at += cmdsize;
                        continue;
                    }
                    let range = vmaddr
                        .checked_add(filesize)
                        .and_then(|end| Range::new(vmaddr, end))
                        .ok_or_else(|| corrupt(file_at, format!("load command {index}: segment at {vmaddr:#x} (+{filesize:#x}) runs past 2^64")))?;
                    if fileoff.checked_add(filesize).is_none_or(|end| end > len) {
                        return Err(corrupt(file_at, format!("load command {index}: segment {range} data at file offset {fileoff:#x} (+{filesize:#x}) runs past the end of the file ({len:#x} bytes): truncated")));
                    }
                    loads.push(Load {
                        range,
                        offset: fileoff,
                        at: file_at,
                    });
                }
                LC_NOTE => {
                    if cmdsize < NOTE_LEN as usize {
                        return Err(corrupt(file_at, format!("load command {index}: LC_NOTE of {cmdsize} bytes, needs {NOTE_LEN}")));
                    }
                    let owner = name_at(body, 8);
                    let (offset, size) = (u64_at(body, 24), u64_at(body, 32));
                    let wanted = (owner == NOTE_VMCOREINFO && vmcoreinfo.is_none())
                        || (owner == NOTE_PMEM_METADATA && metadata_json.is_none());
                    if wanted {
                        if size > MAX_NOTE {
                            return Err(corrupt(file_at, format!("load command {index}: LC_NOTE of {size:#x} bytes exceeds the {MAX_NOTE:#x}-byte limit")));
                        }
                        if offset.checked_add(size).is_none_or(|end| end > len) {
                            return Err(corrupt(file_at, format!("load command {index}: LC_NOTE data at {offset:#x} (+{size:#x}) runs past the end of the file: truncated")));
                        }
                        let mut data = vec![0u8; size as usize];
                        read_exact_at(path, &file, offset, &mut data)?;
                        if owner == NOTE_VMCOREINFO {
                            vmcoreinfo = Some(data);
                        } else {
                            let json = String::from_utf8(data).map_err(|_| {
                                corrupt(offset, "the pmem metadata note is not UTF-8".into())
                            })?;
                            metadata_json = Some(json);
                        }
                    }
                }
                _ => {}
            }
            at += cmdsize;
        }

        loads.sort_by_key(|l| l.range.start);
        for pair in loads.windows(2) {
            if pair[1].range.start < pair[0].range.end {
                return Err(corrupt(
                    pair[1].at,
                    format!(
                        "segment {} overlaps segment {}",
                        pair[1].range, pair[0].range
                    ),
                ));
            }
        }
        let offsets = loads.iter().map(|l| l.offset).collect();
        let map = MemoryMap::new(loads.iter().map(|l| l.range).collect())
            .map_err(|e| corrupt(HEADER_LEN, e.to_string()))?;
        Ok(MachoReader {
            segments: Segments {
                path: path.into(),
                file,
                map,
                offsets,
            },
            arch,
            metadata_json,
            vmcoreinfo,
        })
    }
}

impl PhysicalMemory for MachoReader {
    fn memory_map(&self) -> &MemoryMap {
        &self.segments.map
    }

    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.segments.read_at(addr, buf)
    }
}

impl ImageReader for MachoReader {
    fn format(&self) -> Format {
        Format::Macho
    }
    fn arch(&self) -> Option<Arch> {
        Some(self.arch)
    }
    fn metadata_json(&self) -> Option<&str> {
        self.metadata_json.as_deref()
    }
    fn vmcoreinfo(&self) -> Option<&[u8]> {
        self.vmcoreinfo.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::map;
    use pmem_core::sink::HashingSink;
    use pmem_core::ImageWriter;

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
        assert_eq!(u32_at(&b, 4), CPU_TYPE_ARM64);
        assert_eq!(open_bytes(&b).unwrap().arch(), Some(Arch::Aarch64));
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
        assert_eq!(r.vmcoreinfo(), plan.vmcoreinfo.as_deref());
        assert_eq!(r.metadata_json(), plan.metadata_json.as_deref());
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
