//! The protocol against the in-process driver: layouts, modes, run tables
//! of every size, short reads, Ctrl-C and unload ordering.

use super::protocol::*;
use super::testing::{EventLog, FakeDriver, FakeService, Overflow};
use crate::testing::pattern;
use pmem_core::sink::HashingSink;
use pmem_core::{
    copy_memory, Arch, CopyOptions, ImageWriter, PhysicalMemory, Plan, Range, ReadError,
};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn runs(n: usize) -> Vec<Range> {
    // One-page gaps between 64 KiB runs, starting at 1 MiB.
    (0..n as u64)
        .map(|i| Range::new(MIB + i * 0x11000, MIB + i * 0x11000 + 0x10000).unwrap())
        .collect()
}

fn info_of(driver: &mut FakeDriver, mode: Mode) -> Result<MemoryInfo, DriverError> {
    handshake(driver, mode, driver.layout)
}

#[test]
fn layout_offsets_match_the_header() {
    assert_eq!(InfoLayout::X64.number_of_runs_offset(), 0xA30);
    assert_eq!(InfoLayout::X64.runs_offset(), 0xA38);
    assert_eq!(InfoLayout::X86.number_of_runs_offset(), 0x930);
    assert_eq!(InfoLayout::X86.runs_offset(), 0x938);
    assert_eq!(InfoLayout::X64.len(RUNS_NEW), 0xA38 + 300 * 16);
}

#[test]
fn parses_both_layouts() {
    for layout in [InfoLayout::X64, InfoLayout::X86] {
        let mut d = FakeDriver::new(layout, runs(3), RUNS_NEW);
        let info = info_of(&mut d, Mode::Physical).unwrap();
        assert_eq!(d.mode, Some(1));
        assert_eq!(info.runs.ranges(), &runs(3)[..]);
        assert_eq!(info.run_capacity, 300);
        let w = info.windows;
        assert_eq!(w.cr3, 0x1aa000);
        assert_eq!(w.build(), 19041);
        assert_eq!(w.processors, 4);
        let base = if layout == InfoLayout::X64 {
            0xffff_f800_0000_0000
        } else {
            0x8000_0000
        };
        assert_eq!(w.kernel_base, base + 0x0200_0000);
        assert_eq!(w.kdbg, base + 0x02c0_0000);
        assert_eq!(w.pfn_database, base + 0x0300_0000);
        assert_eq!(w.ps_loaded_module_list, base + 0x0200_2a2a);
        assert_eq!(w.ps_active_process_head, base + 0x0200_1e1e);
        assert_eq!(info.nt_build_number_addr, base + 0x0200_0abc);
    }
    // A 32-bit structure read with the 64-bit layout is refused or differs:
    // the run table sits 0x100 bytes earlier.
    let mut d = FakeDriver::new(InfoLayout::X86, runs(3), RUNS_OLD);
    assert!(handshake(&mut d, Mode::Pte, InfoLayout::X64).is_err());
}

#[test]
fn modes() {
    assert_eq!(Mode::default_for(InfoLayout::X64), Mode::Pte);
    assert_eq!(Mode::default_for(InfoLayout::X86), Mode::Physical);
    for (mode, code) in [(Mode::IoSpace, 0), (Mode::Physical, 1), (Mode::Pte, 2)] {
        assert_eq!(mode.code(), code);
        assert_eq!(mode.name().parse::<Mode>().unwrap(), mode);
        let mut d = FakeDriver::new(InfoLayout::X64, runs(1), RUNS_NEW);
        info_of(&mut d, mode).unwrap();
        assert_eq!(d.mode, Some(code));
    }
    assert!("mmap".parse::<Mode>().is_err());
}

#[test]
fn run_tables_of_old_and_new_drivers() {
    // 19 runs fit an old driver's 20-entry table; a full table may hide
    // more, and more than the table is refused, whichever way the driver
    // counts them.
    let mut d = FakeDriver::new(InfoLayout::X64, runs(19), RUNS_OLD);
    assert_eq!(info_of(&mut d, Mode::Pte).unwrap().run_capacity, 20);
    for n in [20, 21, 64] {
        for overflow in [Overflow::RealCount, Overflow::Capped] {
            let mut d = FakeDriver::new(InfoLayout::X64, runs(n), RUNS_OLD);
            d.overflow = overflow;
            let err = info_of(&mut d, Mode::Pte).unwrap_err();
            assert!(
                matches!(err, DriverError::TooManyRuns { capacity: 20, .. }),
                "{n} {overflow:?}: {err}"
            );
            assert!(err.to_string().contains("more runs"), "{err}");
        }
    }
    // New drivers: 299 fine, 300 full, thousands (Hyper-V) refused.
    let mut d = FakeDriver::new(InfoLayout::X64, runs(299), RUNS_NEW);
    assert_eq!(info_of(&mut d, Mode::Pte).unwrap().runs.len(), 299);
    for n in [300, 301, 4000] {
        let mut d = FakeDriver::new(InfoLayout::X86, runs(n), RUNS_NEW);
        let err = info_of(&mut d, Mode::Pte).unwrap_err();
        assert!(
            matches!(err, DriverError::TooManyRuns { capacity: 300, .. }),
            "{n}: {err}"
        );
    }
}

/// Builds an info buffer and edits its runs.
fn info_with(runs_in: &[(u64, u64)]) -> Vec<u8> {
    let mut d = FakeDriver::new(InfoLayout::X64, runs(1), RUNS_NEW);
    let mut buf = vec![0u8; InfoLayout::X64.len(RUNS_NEW)];
    let n = d.ioctl(IOCTL_GET_INFO, &[], &mut buf).unwrap();
    buf.truncate(n);
    let at = InfoLayout::X64.number_of_runs_offset();
    buf[at..at + 8].copy_from_slice(&(runs_in.len() as u64).to_le_bytes());
    for (i, &(base, len)) in runs_in.iter().enumerate() {
        let at = InfoLayout::X64.runs_offset() + 16 * i;
        buf[at..at + 8].copy_from_slice(&base.to_le_bytes());
        buf[at + 8..at + 16].copy_from_slice(&len.to_le_bytes());
    }
    buf
}

#[test]
fn bad_run_tables() {
    let parse = |r: &[(u64, u64)]| parse_info(&info_with(r), InfoLayout::X64);
    assert!(matches!(parse(&[]), Err(DriverError::NoRuns)));
    assert!(matches!(
        parse(&[(0x1000, 0)]),
        Err(DriverError::BadRun { index: 0, .. })
    ));
    assert!(matches!(
        parse(&[(0x1000, 0x800)]),
        Err(DriverError::BadRun { .. })
    ));
    assert!(matches!(
        parse(&[(0x1001, 0x1000)]),
        Err(DriverError::BadRun { .. })
    ));
    assert!(matches!(
        parse(&[(0x1000, 0x1000), (!0xfff, 0x2000)]),
        Err(DriverError::BadRun { index: 1, .. })
    ));
    assert!(matches!(
        parse(&[(0x1000, 0x3000), (0x2000, 0x1000)]),
        Err(DriverError::Overlap { .. })
    ));
    // Out of order but disjoint: sorted.
    let info = parse(&[(0x5000, 0x1000), (0x1000, 0x1000)]).unwrap();
    assert_eq!(info.runs.ranges()[0].start, 0x1000);
    // Truncated structures.
    let buf = info_with(&[(0x1000, 0x1000)]);
    assert!(matches!(
        parse_info(&buf[..0xA30], InfoLayout::X64),
        Err(DriverError::ShortInfo { .. })
    ));
    // Room for one run only: a single run fills it.
    assert!(matches!(
        parse_info(&buf[..0xA38 + 16], InfoLayout::X64),
        Err(DriverError::TooManyRuns { capacity: 1, .. })
    ));
}

fn source(
    mut driver: FakeDriver,
    log: &EventLog,
    interrupted: Arc<AtomicBool>,
) -> Result<DriverSource<FakeDriver, FakeService>, DriverError> {
    let service = FakeService {
        log: log.clone(),
        fail_install: false,
    };
    let loaded = LoadedDriver::install(service, Path::new("winpmem_x64.sys")).unwrap();
    driver.log = log.clone();
    let layout = driver.layout;
    DriverSource::open(driver, Some(loaded), Mode::Pte, layout, interrupted)
}

/// Copies a source into a raw image in memory; returns the report.
fn copy(
    src: &mut dyn PhysicalMemory,
) -> Result<(pmem_core::CopyReport, Vec<u8>), pmem_core::CopyError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.raw");
    let sink = HashingSink::file(std::fs::File::create(&path).unwrap());
    let writer: Box<dyn ImageWriter> = Box::new(RawCapture::new(Box::new(sink)));
    let mut plan = Plan::new(src.memory_map().clone(), Arch::X86_64);
    let report = copy_memory(
        src,
        writer,
        &mut plan,
        &CopyOptions {
            chunk_size: 256 << 10,
            memory_hash: Some(pmem_core::HashAlgorithm::Sha256),
            ..CopyOptions::default()
        },
        &mut |_| {},
    )?;
    Ok((report, std::fs::read(&path).unwrap()))
}

/// A minimal raw writer (pmem-formats is not a dependency of this crate).
struct RawCapture {
    sink: Box<dyn pmem_core::ByteSink>,
}

impl RawCapture {
    fn new(sink: Box<dyn pmem_core::ByteSink>) -> Self {
        RawCapture { sink }
    }
}

impl ImageWriter for RawCapture {
    fn begin(&mut self, _plan: &Plan) -> Result<(), pmem_core::WriteError> {
        Ok(())
    }
    fn write_chunk(
        &mut self,
        addr: u64,
        chunk: pmem_core::Chunk<'_>,
    ) -> Result<(), pmem_core::WriteError> {
        let io = |source| pmem_core::WriteError::Io {
            offset: addr,
            source,
        };
        let gap = addr - self.sink.position();
        self.sink.write_zeros(gap).map_err(io)?;
        match chunk {
            pmem_core::Chunk::Data(d) => self.sink.write_all(d).map_err(io),
            pmem_core::Chunk::Zero(n) => self.sink.write_zeros(n).map_err(io),
        }
    }
    fn finish(self: Box<Self>) -> Result<pmem_core::SinkSummary, pmem_core::WriteError> {
        self.sink
            .finish()
            .map_err(|source| pmem_core::WriteError::Io { offset: 0, source })
    }
}

#[test]
fn short_reads_are_retried_by_page_and_zero_filled() {
    let log = EventLog::default();
    let mut driver = FakeDriver::new(InfoLayout::X64, runs(40), RUNS_NEW);
    // Bad pages: one inside a run, two adjacent ones, one at a run start.
    let bad = [0x103, 0x125, 0x126, MIB / 0x1000 + 0x11];
    driver.bad_pages = bad.to_vec();
    driver.max_read = 0x3000; // the driver serves at most 3 pages per read
    let mut src = source(driver, &log, Arc::default()).unwrap();
    let (report, image) = copy(&mut src).unwrap();
    let unreadable: Vec<(u64, u64)> = report
        .unreadable
        .iter()
        .map(|r| (r.start / 0x1000, r.pages))
        .collect();
    assert_eq!(unreadable, vec![(0x103, 1), (0x111, 1), (0x125, 2)]);
    for range in runs(40) {
        for page in range.start / 0x1000..range.end / 0x1000 {
            let at = (page * 0x1000) as usize;
            let got = &image[at..at + 0x1000];
            if bad.contains(&page) {
                assert!(
                    got.iter().all(|&b| b == 0),
                    "bad page {page:#x} zero-filled"
                );
            } else {
                assert_eq!(got, &pattern(page * 0x1000, 0x1000)[..], "page {page:#x}");
            }
        }
    }
    drop(src);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "install winpmem_x64.sys",
            "set mode 2",
            "close device",
            "remove service"
        ]
    );
}

#[test]
fn ctrl_c_stops_the_copy_and_unloads_in_order() {
    let log = EventLog::default();
    let interrupted = Arc::new(AtomicBool::new(false));
    let mut src = source(
        FakeDriver::new(InfoLayout::X64, runs(4), RUNS_NEW),
        &log,
        interrupted.clone(),
    )
    .unwrap();
    let mut buf = vec![0u8; 0x1000];
    src.read_at(MIB, &mut buf).unwrap();
    interrupted.store(true, Ordering::SeqCst);
    assert!(matches!(
        src.read_at(MIB, &mut buf),
        Err(ReadError::Fatal { .. })
    ));
    assert!(
        copy(&mut src).is_err(),
        "the pipeline stops on the fatal read"
    );
    drop(src);
    let log = log.lock().unwrap();
    assert_eq!(&log[log.len() - 2..], ["close device", "remove service"]);
}

#[test]
fn failed_handshake_still_unloads_after_closing() {
    let log = EventLog::default();
    let driver = FakeDriver::new(InfoLayout::X64, runs(500), RUNS_NEW);
    let err = source(driver, &log, Arc::default()).err().unwrap();
    assert!(matches!(err, DriverError::TooManyRuns { .. }));
    assert_eq!(
        *log.lock().unwrap(),
        [
            "install winpmem_x64.sys",
            "set mode 2",
            "close device",
            "remove service"
        ]
    );
    // A kept driver (driver load) is not removed; unload reports.
    let log = EventLog::default();
    let service = FakeService {
        log: log.clone(),
        fail_install: false,
    };
    LoadedDriver::install(service, Path::new("d.sys"))
        .unwrap()
        .keep();
    assert_eq!(*log.lock().unwrap(), ["install d.sys"]);
    let service = FakeService {
        log: log.clone(),
        fail_install: true,
    };
    assert!(LoadedDriver::install(service, Path::new("d.sys")).is_err());
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "nothing to remove after a failed install"
    );
}

#[test]
fn fatal_device_errors_are_not_zero_filled() {
    struct Gone;
    impl Device for Gone {
        fn ioctl(&mut self, _: u32, _: &[u8], _: &mut [u8]) -> std::io::Result<usize> {
            Ok(0)
        }
        fn read_at(&mut self, _: u64, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(6)) // ERROR_INVALID_HANDLE
        }
    }
    let map = pmem_core::MemoryMap::new(runs(1)).unwrap();
    let mut mem = DriverMemory::new(Gone, map, Arc::default());
    let mut buf = [0u8; 16];
    assert!(matches!(
        mem.read_at(MIB, &mut buf),
        Err(ReadError::Fatal { .. })
    ));
}

/// CTL_CODE from winioctl.h.
fn ctl_code(device: u32, function: u32, method: u32, access: u32) -> u32 {
    (device << 16) | (access << 14) | (function << 2) | method
}

#[test]
fn ioctl_codes_match_winpmem() {
    // WinPmem's src/userspace_interface/ctl_codes.h: CTL_CODE(0x22, 0x101..
    // 0x103, 3, 3), METHOD_NEITHER with FILE_READ_DATA | FILE_WRITE_DATA.
    assert_eq!(IOCTL_SET_MODE, ctl_code(0x22, 0x101, 3, 3));
    assert_eq!(IOCTL_WRITE_ENABLE, ctl_code(0x22, 0x102, 3, 3));
    assert_eq!(IOCTL_GET_INFO, ctl_code(0x22, 0x103, 3, 3));
    assert_eq!(
        (IOCTL_SET_MODE, IOCTL_WRITE_ENABLE, IOCTL_GET_INFO),
        (0x22C407, 0x22C40B, 0x22C40F)
    );
}

#[test]
fn write_enable_accepted_by_a_build_with_write_support() {
    let mut d = FakeDriver::new(InfoLayout::X64, runs(1), RUNS_NEW);
    d.write_support = true;
    enable_writes(&mut d).unwrap();
    assert!(d.writes_enabled);
    assert_eq!(*d.log.lock().unwrap(), ["writes on"]);
    // The driver flips a switch: a second request turns writes off again,
    // which is why pmem sends it once, to a driver it just loaded.
    enable_writes(&mut d).unwrap();
    assert!(!d.writes_enabled);
}

#[test]
fn write_enable_refused_by_a_build_without_write_support() {
    // As every released driver: IOCTL_WRITE_ENABLE is an unknown request.
    let mut d = FakeDriver::new(InfoLayout::X64, runs(1), RUNS_NEW);
    let err = enable_writes(&mut d).unwrap_err();
    assert!(
        matches!(err, DriverError::WritesNotSupported { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    for part in [
        "refused to enable writes (IOCTL_WRITE_ENABLE)",
        "built without write support",
        "only test-signed WinPmem builds compiled with write support",
    ] {
        assert!(text.contains(part), "{part:?} missing: {text}");
    }
    assert!(!d.writes_enabled);
    // The driver still works for reading.
    info_of(&mut d, Mode::Pte).unwrap();

    // Any other failure says what failed, without claiming a build.
    struct Denied;
    impl Device for Denied {
        fn ioctl(&mut self, _: u32, _: &[u8], _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(5)) // ERROR_ACCESS_DENIED
        }
        fn read_at(&mut self, _: u64, _: &mut [u8]) -> std::io::Result<usize> {
            unreachable!()
        }
    }
    let err = enable_writes(&mut Denied).unwrap_err();
    assert!(matches!(err, DriverError::WriteEnable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("did not enable writes (IOCTL_WRITE_ENABLE)"),
        "{err}"
    );
    assert!(!err.to_string().contains("built without"), "{err}");
}

#[test]
fn driver_load_write_keeps_a_writable_driver_and_unloads_a_refusing_one() {
    for write_support in [true, false] {
        let log = EventLog::default();
        let service = FakeService {
            log: log.clone(),
            fail_install: false,
        };
        let loaded = LoadedDriver::install(service, Path::new("winpmem_x64.sys")).unwrap();
        let mut device = FakeDriver::new(InfoLayout::X64, runs(1), RUNS_NEW);
        device.log = log.clone();
        device.write_support = write_support;
        match enable_writes_after_load(loaded, device) {
            Ok(loaded) if write_support => loaded.keep(),
            Err(DriverError::WritesNotSupported { .. }) if !write_support => {}
            other => panic!("write support {write_support}: {:?}", other.err()),
        }
        // The handle closes before any unload; a refused --write leaves
        // nothing loaded.
        let expected: &[&str] = if write_support {
            &["install winpmem_x64.sys", "writes on", "close device"]
        } else {
            &["install winpmem_x64.sys", "close device", "remove service"]
        };
        assert_eq!(*log.lock().unwrap(), expected);
    }
}
