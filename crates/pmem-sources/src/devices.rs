//! The files Linux reads memory through (/proc/kcore, /dev/crash, /dev/mem
//! and pmem's module device): turns one, opened, into a source: its memory
//! map, what it can't give, and the probe reads that decide whether it is
//! usable at all. Generic over [`ReadAt`] so tests can stand in for devices.

use crate::error::SourceError;
use crate::info::{NotAcquired, OpenedSource, SourceInfo};
use crate::iomem::Iomem;
use crate::kcore;
use crate::kind::SourceKind;
use crate::reader::{read_once, FileMemory, Preads, ReadAt, Reference};
use pmem_core::{Arch, MemoryMap, PhysicalMemory, Range, ReadError, PAGE_SIZE};
use std::io;
use std::path::Path;

/// Linux's EPERM: what /dev/mem answers under STRICT_DEVMEM. Spelled out
/// because this module builds on every OS.
const EPERM: i32 = 1;

/// Below this, STRICT_DEVMEM still lets /dev/mem read (or shows zeros).
const LOW_MEMORY: u64 = 1 << 20;

pub(crate) fn kcore<F: ReadAt + Send + 'static>(
    file: F,
    path: &Path,
    iomem: Iomem,
) -> Result<OpenedSource, SourceError> {
    let kcore_error = |source| SourceError::Kcore {
        path: path.to_path_buf(),
        source,
    };
    let header = kcore::parse(&file).map_err(kcore_error)?;
    let system_ram = iomem.system_ram();
    let mapping = kcore::map_physical(&header.segments, &system_ram).map_err(kcore_error)?;
    let coverage = MemoryMap::normalized(mapping.file_map.memory_map().ranges().to_vec());
    let uncovered = format!("not covered by any segment of {}", path.display());
    let (map, not_acquired) = split_ram(&system_ram, &coverage, &uncovered);
    let info = SourceInfo {
        kind: SourceKind::Kcore,
        path: path.to_path_buf(),
        arch: header.arch,
        direct_map_offset: mapping.direct_map_offset,
        vmcoreinfo: header.vmcoreinfo,
        system_ram,
        iomem,
        not_acquired,
        skipped: Vec::new(),
        module_version: None,
    };
    // The ELF header: the kernel builds it on every read of a live kcore.
    let reference = Reference::Fixed {
        offset: 0,
        len: ELF_HEADER_SIZE,
    };
    let memory = FileMemory {
        file,
        path: path.to_path_buf(),
        map,
        file_map: mapping.file_map,
        preads: Preads::AnyLength,
        reference,
    };
    probe_and_wrap(memory, info)
}

/// An ELF64 file header's size.
const ELF_HEADER_SIZE: usize = 64;

/// /dev/crash (RHEL): offsets are physical addresses, reads whole pages.
pub(crate) fn crash<F: ReadAt + Send + 'static>(
    file: F,
    path: &Path,
    iomem: Iomem,
) -> Result<OpenedSource, SourceError> {
    let (map, info) = device_ram_and_info(SourceKind::Crash, path, iomem);
    let memory = FileMemory::device(file, path.to_path_buf(), map, Preads::OneAlignedPage);
    probe_and_wrap(memory, info)
}

/// pmem's module (/dev/pmem-phys): offsets are physical addresses; any
/// length; holes answer ENXIO, unsafe RAM pages EIO (both recorded as
/// unreadable by the pipeline, never read as made-up bytes).
pub(crate) fn module<F: ReadAt + Send + 'static>(
    file: F,
    path: &Path,
    iomem: Iomem,
    version: String,
) -> Result<OpenedSource, SourceError> {
    let (map, mut info) = device_ram_and_info(SourceKind::Module, path, iomem);
    info.module_version = Some(version);
    let memory = FileMemory::device(file, path.to_path_buf(), map, Preads::AnyLength);
    probe_and_wrap(memory, info)
}

/// /dev/mem: offsets are physical addresses. Refused when the kernel
/// enforces STRICT_DEVMEM, detected by reading one page of RAM above 1 MiB.
pub(crate) fn mem<F: ReadAt + Send + 'static>(
    file: F,
    path: &Path,
    iomem: Iomem,
) -> Result<OpenedSource, SourceError> {
    let (map, info) = device_ram_and_info(SourceKind::Mem, path, iomem);
    if let Some(addr) = strict_probe_address(&map) {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        let result = read_once(&file, &mut page, addr);
        match devmem_verdict(&result) {
            DevmemProbe::Readable => {}
            DevmemProbe::Strict => {
                return Err(SourceError::StrictDevmem {
                    path: path.to_path_buf(),
                    addr,
                })
            }
            // Not the STRICT_DEVMEM answer: one bad page, or a device
            // that reads nothing, which the general probe tells apart.
            DevmemProbe::Failed => {}
        }
    }
    let memory = FileMemory::device(file, path.to_path_buf(), map, Preads::AnyLength);
    probe_and_wrap(memory, info)
}

/// What /dev/mem's answer to a one-page read of RAM above 1 MiB means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DevmemProbe {
    Readable,
    /// EPERM: STRICT_DEVMEM allows only the low 1 MiB (and MMIO).
    Strict,
    /// Any other failure: the device is no good either.
    Failed,
}

pub(crate) fn devmem_verdict(result: &io::Result<usize>) -> DevmemProbe {
    match result {
        Ok(n) if *n as u64 == PAGE_SIZE => DevmemProbe::Readable,
        Err(e) if e.raw_os_error() == Some(EPERM) => DevmemProbe::Strict,
        _ => DevmemProbe::Failed,
    }
}

/// The first whole page of the map at or above 1 MiB.
pub(crate) fn strict_probe_address(map: &MemoryMap) -> Option<u64> {
    map.ranges().iter().find_map(|r| {
        let addr = r
            .start
            .max(LOW_MEMORY)
            .checked_next_multiple_of(PAGE_SIZE)?;
        (addr.checked_add(PAGE_SIZE)? <= r.end).then_some(addr)
    })
}

/// Devices addressed by physical offset read all of RAM, in whole pages.
fn device_ram_and_info(kind: SourceKind, path: &Path, iomem: Iomem) -> (MemoryMap, SourceInfo) {
    let system_ram = iomem.system_ram();
    let everything = MemoryMap::new(vec![Range {
        start: 0,
        end: u64::MAX,
    }])
    .unwrap_or_default();
    let (map, not_acquired) = split_ram(&system_ram, &everything, "");
    let info = SourceInfo {
        kind,
        path: path.to_path_buf(),
        arch: Arch::host(),
        direct_map_offset: None,
        vmcoreinfo: None,
        system_ram,
        iomem,
        not_acquired,
        skipped: Vec::new(),
        module_version: None,
    };
    (map, info)
}

/// A map from ranges that are sorted and disjoint by construction.
fn map_of(ranges: Vec<Range>) -> MemoryMap {
    MemoryMap::new(ranges.clone()).unwrap_or_else(|_| MemoryMap::normalized(ranges))
}

/// Splits System RAM into the whole pages `coverage` can give and the
/// rest, each with its reason. Adjacent covering segments merge in
/// `coverage`, so a RAM range spanning two of them stays one range.
pub(crate) fn split_ram(
    ram: &MemoryMap,
    coverage: &MemoryMap,
    uncovered_reason: &str,
) -> (MemoryMap, Vec<NotAcquired>) {
    let whole_pages = |m: &MemoryMap| {
        map_of(
            m.ranges()
                .iter()
                .filter_map(|r| r.shrink_to_alignment(PAGE_SIZE))
                .collect(),
        )
    };
    let clipped = whole_pages(ram);
    let acquired = whole_pages(&clipped.intersect(coverage));
    let uncovered = clipped.subtract(coverage);
    let partial = ram.subtract(&acquired).subtract(&uncovered);
    let note = |reason: &str| {
        let reason = reason.to_string();
        move |r: &Range| NotAcquired {
            range: *r,
            reason: reason.clone(),
        }
    };
    let mut not_acquired: Vec<NotAcquired> = uncovered
        .ranges()
        .iter()
        .map(note(uncovered_reason))
        .chain(
            partial
                .ranges()
                .iter()
                .map(note("partial page: the kernel exposes whole pages only")),
        )
        .collect();
    not_acquired.sort_by_key(|n| n.range.start);
    (acquired, not_acquired)
}

/// Wraps up a source and probe-reads it, so that a source that opens but
/// can't read fails here, before any byte is written, and `auto` moves on.
fn probe_and_wrap<F: ReadAt + Send + 'static>(
    mut memory: FileMemory<F>,
    info: SourceInfo,
) -> Result<OpenedSource, SourceError> {
    if memory.map.is_empty() {
        return Err(SourceError::NothingReadable {
            kind: info.kind,
            path: info.path,
        });
    }
    if let Err(source) = probe(&mut memory) {
        return Err(SourceError::Probe {
            kind: info.kind,
            path: info.path,
            source,
        });
    }
    Ok(OpenedSource {
        memory: Box::new(memory),
        info,
    })
}

/// How many pages the probe tries at most.
const PROBE_PAGES: usize = 16;

/// Reads the first page of the map; when it fails, pages spread over the
/// map until one reads. One bad page is not a source that can't read: it
/// is read again, and recorded, by the copy. Fails with the first page's
/// error when none of the pages read, or at once when the source is gone.
pub(crate) fn probe(memory: &mut dyn PhysicalMemory) -> Result<(), ReadError> {
    let mut first_error = None;
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for addr in probe_addresses(memory.memory_map()) {
        match memory.read_at(addr, &mut page) {
            Ok(()) => return Ok(()),
            Err(e @ ReadError::Unreadable { .. }) => {
                first_error.get_or_insert(e);
            }
            Err(gone) => return Err(gone),
        }
    }
    Err(first_error.unwrap_or_else(|| ReadError::Fatal {
        what: "probing".into(),
        addr: 0,
        source: io::Error::new(io::ErrorKind::InvalidInput, "empty memory map"),
    }))
}

/// The pages the probe reads, first page first: the first page of each
/// range, then pages evenly spread over the map; at most [`PROBE_PAGES`].
/// The map holds whole pages only.
pub(crate) fn probe_addresses(map: &MemoryMap) -> Vec<u64> {
    let mut addresses: Vec<u64> = map
        .ranges()
        .iter()
        .map(|r| r.start)
        .take(PROBE_PAGES / 2)
        .collect();
    let pages = map.total_bytes() / PAGE_SIZE;
    let spread = (PROBE_PAGES - addresses.len()) as u64;
    for i in 1..=spread {
        if let Some(addr) = nth_page(map, pages * i / (spread + 1)) {
            if !addresses.contains(&addr) {
                addresses.push(addr);
            }
        }
    }
    addresses
}

/// The address of the map's `nth` page (0-based).
fn nth_page(map: &MemoryMap, nth: u64) -> Option<u64> {
    let mut skip = nth.checked_mul(PAGE_SIZE)?;
    for r in map.ranges() {
        if skip < r.len() {
            return Some(r.start + skip);
        }
        skip -= r.len();
    }
    None
}

// The tests inject Unix errno values.
#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::iomem;
    use crate::reader::tests::{errno, FakeDevice};
    use crate::testing::{self, pattern, KcoreBuilder, Segment, DIRECT_MAP};
    use pmem_core::ReadError;

    const MIB: u64 = 1 << 20;

    fn r(start: u64, end: u64) -> Range {
        Range::new(start, end).unwrap()
    }

    fn iomem_of(ram: &[Range]) -> Iomem {
        iomem::parse(&testing::iomem_text(ram)).unwrap()
    }

    /// A kcore image in memory, built with the testing builder.
    fn kcore_bytes(builder: &KcoreBuilder) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kcore");
        builder.write(&path).unwrap();
        std::fs::read(path).unwrap()
    }

    /// A kcore file built with the testing builder, opened.
    fn kcore_file(builder: &KcoreBuilder) -> std::fs::File {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kcore");
        builder.write(&path).unwrap();
        // The open file outlives the directory on Unix.
        std::fs::File::open(path).unwrap()
    }

    fn read(source: &mut OpenedSource, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        source.memory.read_at(addr, &mut buf).unwrap();
        buf
    }

    #[test]
    fn kcore_reads_ram_by_physical_address() {
        let ram = [r(0x1000, 0x9fc00), r(MIB, 8 * MIB), r(16 * MIB, 20 * MIB)];
        let builder = KcoreBuilder::new(Arch::X86_64)
            .vmcoreinfo(b"OSRELEASE=6.1.0\nPAGESIZE=4096\n")
            .segment(Segment::not_ram(0xffff_ffff_8100_0000, 2 * MIB).with_paddr(2 * MIB))
            .segment(Segment::not_ram(0xffff_c900_0000_0000, 64 * MIB))
            .segment(Segment::ram(0x1000, 0x9e000))
            // One RAM range served by two adjacent segments.
            .segment(Segment::ram(MIB, 3 * MIB))
            .segment(Segment::ram(4 * MIB, 4 * MIB))
            // 16..20 MiB has no segment beyond 18 MiB.
            .segment(Segment::ram(16 * MIB, 2 * MIB));
        let file = kcore_file(&builder);
        let mut source = kcore(file, Path::new("/proc/kcore"), iomem_of(&ram)).unwrap();
        assert_eq!(
            source.memory.memory_map().ranges(),
            &[r(0x1000, 0x9f000), r(MIB, 8 * MIB), r(16 * MIB, 18 * MIB)]
        );
        let info = &source.info;
        assert_eq!(info.arch, Arch::X86_64);
        assert_eq!(info.direct_map_offset, Some(DIRECT_MAP));
        assert_eq!(
            info.vmcoreinfo.as_deref(),
            Some(&b"OSRELEASE=6.1.0\nPAGESIZE=4096\n"[..])
        );
        assert_eq!(info.system_ram.ranges(), &ram);
        let lost: Vec<(Range, &str)> = info
            .not_acquired
            .iter()
            .map(|n| (n.range, n.reason.as_str()))
            .collect();
        assert_eq!(
            lost,
            [
                (
                    r(0x9f000, 0x9fc00),
                    "partial page: the kernel exposes whole pages only"
                ),
                (
                    r(18 * MIB, 20 * MIB),
                    "not covered by any segment of /proc/kcore"
                ),
            ]
        );
        for addr in [0x1000, 0x5123, MIB, 4 * MIB - 10, 7 * MIB, 16 * MIB + 77] {
            assert_eq!(
                read(&mut source, addr, 10),
                pattern(addr, 10),
                "at {addr:#x}"
            );
        }
        // Across the boundary of the two segments.
        assert_eq!(
            read(&mut source, 4 * MIB - 4096, 3 * 4096),
            pattern(4 * MIB - 4096, 3 * 4096)
        );
        assert_eq!(
            read(&mut source, MIB, 7 * MIB as usize),
            pattern(MIB, 7 * MIB as usize)
        );
    }

    #[test]
    fn kcore_old_kernel() {
        let ram = [r(0x1000, 0x9fc00), r(MIB, 16 * MIB)];
        let builder = KcoreBuilder::new(Arch::X86_64)
            .segment(Segment::not_ram(0xffff_ffff_8100_0000, 2 * MIB).with_paddr(0))
            .segment(Segment::not_ram(0xffff_c900_0000_0000, 64 * MIB).with_paddr(0))
            .segment(Segment::old_kernel_ram(0x1000, 0x9e000))
            .segment(Segment::old_kernel_ram(MIB, 15 * MIB));
        let mut source = kcore(kcore_file(&builder), Path::new("kcore"), iomem_of(&ram)).unwrap();
        assert_eq!(source.info.direct_map_offset, Some(DIRECT_MAP));
        assert_eq!(
            source.memory.memory_map().ranges(),
            &[r(0x1000, 0x9f000), r(MIB, 16 * MIB)]
        );
        assert_eq!(
            read(&mut source, 9 * MIB + 5, 100),
            pattern(9 * MIB + 5, 100)
        );
        assert_eq!(source.info.vmcoreinfo, None);
    }

    #[test]
    fn kcore_without_ram_is_refused() {
        let builder =
            KcoreBuilder::new(Arch::Aarch64).segment(Segment::not_ram(0xffff_8000_0000_0000, MIB));
        let err = kcore(
            kcore_file(&builder),
            Path::new("k"),
            iomem_of(&[r(0x4000_0000, 0x8000_0000)]),
        )
        .unwrap_err();
        assert!(matches!(err, SourceError::NothingReadable { .. }), "{err}");
    }

    #[test]
    fn kcore_probe_failure() {
        let ram = [r(MIB, 2 * MIB)];
        let builder = KcoreBuilder::new(Arch::X86_64).segment(Segment::ram(MIB, MIB));
        let mut device = FakeDevice::new(kcore_bytes(&builder));
        // Headers read fine, memory does not.
        device.inject = Box::new(|offset, _, _| (offset >= 0x1000).then(|| Err(errno(libc::EIO))));
        let err = kcore(device, Path::new("/proc/kcore"), iomem_of(&ram)).unwrap_err();
        assert!(
            matches!(
                err,
                SourceError::Probe {
                    kind: SourceKind::Kcore,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("0x100000"), "{err}");
    }

    /// One bad page, even the first, does not fail the probe of a source
    /// asked for by name: the copy reads it again and records it.
    #[test]
    fn kcore_with_a_bad_first_page_opens() {
        let ram = [r(0x1000, 0x9fc00), r(MIB, 4 * MIB)];
        let builder = KcoreBuilder::new(Arch::X86_64)
            .segment(Segment::ram(0x1000, 0x9e000))
            .segment(Segment::ram(MIB, 3 * MIB));
        let offsets = kcore_file_offsets(&builder);
        let bytes = kcore_bytes(&builder);
        // File offset of physical 0x1000: the first page of RAM.
        let first = offsets[0];
        for code in [libc::EIO, libc::EFAULT, libc::ENOTCONN, libc::EINTR] {
            let mut device = FakeDevice::new(bytes.clone());
            device.inject = Box::new(move |offset, len, _| {
                (offset < first + 0x1000 && first < offset + len as u64).then(|| Err(errno(code)))
            });
            let mut source = kcore(device, Path::new("/proc/kcore"), iomem_of(&ram))
                .unwrap_or_else(|e| panic!("errno {code}: {e}"));
            assert!(matches!(
                source.memory.read_at(0x1000, &mut [0; 4096]),
                Err(ReadError::Unreadable { addr: 0x1000, .. })
            ));
            assert_eq!(read(&mut source, 0x2000, 4096), pattern(0x2000, 4096));
        }
    }

    /// A kcore whose every read fails after the header was parsed (a FUSE
    /// server that died): the probe says the source is gone.
    #[test]
    fn kcore_gone_while_probing() {
        let ram = [r(MIB, 2 * MIB)];
        let builder = KcoreBuilder::new(Arch::X86_64).segment(Segment::ram(MIB, MIB));
        let mut device = FakeDevice::new(kcore_bytes(&builder));
        // The server dies at the first read of RAM: it and every read
        // after it fail, the header too.
        let gone = std::sync::atomic::AtomicBool::new(false);
        device.inject = Box::new(move |offset, _, _| {
            use std::sync::atomic::Ordering::SeqCst;
            (offset >= 0x1000 || gone.load(SeqCst)).then(|| {
                gone.store(true, SeqCst);
                Err(errno(libc::ENOTCONN))
            })
        });
        let err = kcore(device, Path::new("/proc/kcore"), iomem_of(&ram)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SourceError::Probe { .. }), "{text}");
        assert!(text.contains("gone") && text.contains("header"), "{text}");
    }

    #[test]
    fn probe_addresses_cover_the_map() {
        let map = MemoryMap::new(vec![r(0x1000, 0x9f000), r(MIB, 64 * MIB)]).unwrap();
        let addresses = probe_addresses(&map);
        assert_eq!(addresses[..2], [0x1000, MIB]);
        assert!(
            addresses.len() <= 16 && addresses.len() > 8,
            "{addresses:x?}"
        );
        assert!(addresses
            .iter()
            .all(|&a| a % PAGE_SIZE == 0 && map.covers(a, PAGE_SIZE)));
        assert!(addresses.iter().any(|&a| a > 32 * MIB), "{addresses:x?}");
        let one_page = MemoryMap::new(vec![r(0x1000, 0x2000)]).unwrap();
        assert_eq!(probe_addresses(&one_page), [0x1000]);
    }

    fn kcore_file_offsets(builder: &KcoreBuilder) -> Vec<u64> {
        let dir = tempfile::tempdir().unwrap();
        builder.write(&dir.path().join("kcore")).unwrap()
    }

    fn physical(len: u64) -> Vec<u8> {
        pattern(0, len as usize)
    }

    #[test]
    fn crash_reads_pages() {
        let ram = [r(0x1000, 0x9fc00), r(MIB, 4 * MIB)];
        let mut source = crash(
            FakeDevice::new(physical(4 * MIB)),
            Path::new("/dev/crash"),
            iomem_of(&ram),
        )
        .unwrap();
        assert_eq!(source.memory.read_granularity(), 4096);
        assert_eq!(
            source.memory.memory_map().ranges(),
            &[r(0x1000, 0x9f000), r(MIB, 4 * MIB)]
        );
        assert_eq!(source.info.not_acquired.len(), 1);
        assert_eq!(
            read(&mut source, MIB, MIB as usize),
            pattern(MIB, MIB as usize)
        );
    }

    /// The module's device: one pread per request, its version recorded;
    /// a page it won't read (EIO: offline, poisoned; ENXIO: not RAM) is
    /// an unreadable page for the pipeline, never a fatal error.
    #[test]
    fn module_reads_ranges_and_reports_refused_pages() {
        let ram = [r(0x1000, 0x9fc00), r(MIB, 4 * MIB)];
        let mut device = FakeDevice::new(physical(4 * MIB));
        device.inject = Box::new(|offset, len, _| {
            let bad = 2 * MIB + 0x3000;
            (offset <= bad && bad < offset + len as u64).then(|| {
                if offset == bad {
                    Err(errno(libc::EIO))
                } else {
                    // The module stops before the page it refuses.
                    Ok((bad - offset) as usize)
                }
            })
        });
        let mut source = module(
            device,
            Path::new("/dev/pmem-phys"),
            iomem_of(&ram),
            "1.0.0".into(),
        )
        .unwrap();
        assert_eq!(source.info.kind, SourceKind::Module);
        assert_eq!(source.info.module_version.as_deref(), Some("1.0.0"));
        assert_eq!(source.memory.read_granularity(), 1);
        assert_eq!(
            source.memory.memory_map().ranges(),
            &[r(0x1000, 0x9f000), r(MIB, 4 * MIB)]
        );
        assert_eq!(read(&mut source, MIB, 0x12345), pattern(MIB, 0x12345));
        let mut buf = vec![0; MIB as usize];
        match source.memory.read_at(2 * MIB, &mut buf) {
            Err(ReadError::Unreadable { addr, .. }) => assert_eq!(addr, 2 * MIB + 0x3000),
            other => panic!("{other:?}"),
        }
        let enxio = io::Error::from_raw_os_error(libc::ENXIO);
        assert_eq!(crate::reader::classify(&enxio), crate::reader::Fault::Page);
    }

    #[test]
    fn crash_preads_are_page_sized() {
        // Inspect the device's reads through a shared log.
        use std::sync::{Arc, Mutex};
        struct Logged(Vec<u8>, Arc<Mutex<Vec<(u64, usize)>>>);
        impl ReadAt for Logged {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
                self.1.lock().unwrap().push((offset, buf.len()));
                self.0.read_at(buf, offset)
            }
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let ram = [r(MIB, 4 * MIB)];
        let device = Logged(physical(4 * MIB), log.clone());
        let mut source = crash(device, Path::new("/dev/crash"), iomem_of(&ram)).unwrap();
        log.lock().unwrap().clear();
        assert_eq!(
            read(&mut source, 2 * MIB, 2 * MIB as usize),
            pattern(2 * MIB, 2 * MIB as usize)
        );
        let reads = log.lock().unwrap().clone();
        assert_eq!(reads.len(), 512);
        assert!(reads
            .iter()
            .all(|&(offset, len)| len == 4096 && offset % 4096 == 0));
    }

    #[test]
    fn devmem_verdicts() {
        assert_eq!(devmem_verdict(&Ok(4096)), DevmemProbe::Readable);
        assert_eq!(devmem_verdict(&Err(errno(EPERM))), DevmemProbe::Strict);
        assert_eq!(
            devmem_verdict(&Err(errno(libc::EFAULT))),
            DevmemProbe::Failed
        );
        assert_eq!(devmem_verdict(&Err(errno(libc::EIO))), DevmemProbe::Failed);
        assert_eq!(devmem_verdict(&Ok(0)), DevmemProbe::Failed);
        assert_eq!(devmem_verdict(&Ok(100)), DevmemProbe::Failed);
        let map = MemoryMap::new(vec![
            r(0x1000, 0x9f000),
            r(0xfff00, 0x101000),
            r(0x200000, 0x300000),
        ])
        .unwrap();
        assert_eq!(strict_probe_address(&map), Some(0x100000));
        let map = MemoryMap::new(vec![
            r(0x1000, 0x9f000),
            r(0xfff00, 0x100fff),
            r(0x4000_0000, 0x5000_0000),
        ])
        .unwrap();
        assert_eq!(strict_probe_address(&map), Some(0x4000_0000));
        let map = MemoryMap::new(vec![r(0x1000, 0x9f000)]).unwrap();
        assert_eq!(strict_probe_address(&map), None);
    }

    #[test]
    fn devmem_strict_is_refused() {
        let ram = [r(0x1000, 0x9fc00), r(MIB, 4 * MIB)];
        let mut device = FakeDevice::new(physical(4 * MIB));
        // Like STRICT_DEVMEM: low memory readable, RAM above 1 MiB EPERM.
        device.inject = Box::new(|offset, _, _| (offset >= MIB).then(|| Err(errno(EPERM))));
        let err = mem(device, Path::new("/dev/mem"), iomem_of(&ram)).unwrap_err();
        assert!(
            matches!(err, SourceError::StrictDevmem { addr: 0x100000, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("STRICT_DEVMEM"));

        // Another answer above 1 MiB is not STRICT_DEVMEM: the low pages
        // read, so the device is used and the copy records the bad ones.
        let mut device = FakeDevice::new(physical(4 * MIB));
        device.inject = Box::new(|offset, _, _| (offset >= MIB).then(|| Err(errno(libc::ENXIO))));
        let mut source = mem(device, Path::new("/dev/mem"), iomem_of(&ram)).unwrap();
        assert_eq!(read(&mut source, 0x2000, 0x1000), pattern(0x2000, 0x1000));
        // A device that reads nothing fails its probe.
        let mut device = FakeDevice::new(physical(4 * MIB));
        device.inject = Box::new(|_, _, _| Some(Err(errno(libc::ENXIO))));
        let err = mem(device, Path::new("/dev/mem"), iomem_of(&ram)).unwrap_err();
        assert!(
            matches!(
                err,
                SourceError::Probe {
                    kind: SourceKind::Mem,
                    ..
                }
            ),
            "{err}"
        );

        let mut source = mem(
            FakeDevice::new(physical(4 * MIB)),
            Path::new("/dev/mem"),
            iomem_of(&ram),
        )
        .unwrap();
        assert_eq!(source.memory.read_granularity(), 1);
        assert_eq!(read(&mut source, 0x9e000, 0x1000), pattern(0x9e000, 0x1000));
        match source.memory.read_at(5 * MIB, &mut [0; 16]) {
            Err(ReadError::Fatal { .. }) => {}
            other => panic!("outside the map: {other:?}"),
        }
    }

    #[test]
    fn split_ram_records_every_lost_byte() {
        let ram = MemoryMap::new(vec![
            r(0x100, 0x200),
            r(0x1000, 0x9fc00),
            r(MIB, 3 * MIB + 5),
        ])
        .unwrap();
        let coverage = MemoryMap::new(vec![r(0, 0x50000), r(MIB + 0x800, 4 * MIB)]).unwrap();
        let (map, lost) = split_ram(&ram, &coverage, "gap");
        assert_eq!(
            map.ranges(),
            &[r(0x1000, 0x50000), r(MIB + 0x1000, 3 * MIB)]
        );
        let lost: Vec<(Range, &str)> = lost.iter().map(|n| (n.range, &n.reason[..3])).collect();
        assert_eq!(
            lost,
            [
                (r(0x100, 0x200), "par"),
                (r(0x50000, 0x9f000), "gap"),
                (r(0x9f000, 0x9fc00), "par"),
                (r(MIB, MIB + 0x800), "gap"),
                (r(MIB + 0x800, MIB + 0x1000), "par"),
                (r(3 * MIB, 3 * MIB + 5), "par"),
            ]
        );
        let total: u64 = lost.iter().map(|(r, _)| r.len()).sum();
        assert_eq!(total + map.total_bytes(), ram.total_bytes());
    }
}
