//! The device interface of the WinPmem driver (version 4.x, and the 2.x/3.x
//! drivers it grew from), platform-neutral: IOCTL codes, acquisition modes,
//! the WINPMEM_MEMORY_INFO structure in its 64- and 32-bit layouts, run
//! validation, and physical reads with short-read handling. The real device
//! (cfg(windows)) and the in-process test device both implement [`Device`].
//!
//! Facts from WinPmem's public headers (all little-endian, `pack(2)`):
//! * IOCTL_SET_MODE = 0x22C407, input one u32: 0 iospace (MmMapIoSpace),
//!   1 physical (\Device\PhysicalMemory), 2 PTE remapping;
//! * IOCTL_WRITE_ENABLE = 0x22C40B, no input or output: flips the driver's
//!   write switch (IRP_MJ_WRITE through the \Device\PhysicalMemory
//!   section), compiled in only when the driver is built with
//!   PMEM_WRITE_ENABLED; other builds answer it as an unknown request;
//! * IOCTL_GET_INFO = 0x22C40F, output WINPMEM_MEMORY_INFO: CR3,
//!   NtBuildNumber, KernBase, KDBG, KPCR[64] (32 on x86), PfnDataBase,
//!   PsLoadedModuleList, PsActiveProcessHead, NtBuildNumberAddr, 0xFE
//!   padding words, NumberOfRuns, then runs of {u64 BaseAddress, u64
//!   NumberOfBytes}: 20 in older drivers, 300 in 4.x;
//! * memory is read with a seek to the physical address and ReadFile.

use pmem_core::{MemoryMap, PhysicalMemory, Range, ReadError, WindowsMetadata, PAGE_SIZE};
use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// CTL_CODE(0x22, 0x101, METHOD_NEITHER, FILE_READ_DATA | FILE_WRITE_DATA).
pub const IOCTL_SET_MODE: u32 = 0x22C407;
/// CTL_CODE(0x22, 0x102, METHOD_NEITHER, FILE_READ_DATA | FILE_WRITE_DATA).
pub const IOCTL_WRITE_ENABLE: u32 = 0x22C40B;
/// CTL_CODE(0x22, 0x103, METHOD_NEITHER, FILE_READ_DATA | FILE_WRITE_DATA).
pub const IOCTL_GET_INFO: u32 = 0x22C40F;
/// The device the driver creates.
pub const DEVICE_PATH: &str = r"\\.\pmem";
/// Service name pmem installs the driver under (WinPmem 4 uses "winpmem";
/// a different name keeps pmem from removing a service another tool owns).
pub const SERVICE_NAME: &str = "pmem";
/// Run-table sizes of the driver generations: WinPmem 2.x and 3.x...
pub const RUNS_OLD: usize = 20;
/// ...and 4.x.
pub const RUNS_NEW: usize = 300;
/// Bytes of one run entry.
const RUN_LEN: usize = 16;

/// How the driver maps physical memory for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// MmMapIoSpace: can crash some machines (mapping RAM with a caching
    /// type other than the one it is mapped with elsewhere).
    IoSpace,
    /// The \Device\PhysicalMemory section.
    Physical,
    /// Remapping a page table entry of the driver onto each page.
    Pte,
}

impl Mode {
    /// The value IOCTL_SET_MODE takes.
    pub fn code(self) -> u32 {
        match self {
            Mode::IoSpace => 0,
            Mode::Physical => 1,
            Mode::Pte => 2,
        }
    }

    /// The name `--mode` takes and the manifest records.
    pub fn name(self) -> &'static str {
        match self {
            Mode::IoSpace => "iospace",
            Mode::Physical => "physical",
            Mode::Pte => "pte",
        }
    }

    /// WinPmem's default: PTE remapping on 64-bit kernels, the
    /// PhysicalMemory section on 32-bit ones.
    pub fn default_for(layout: InfoLayout) -> Mode {
        match layout {
            InfoLayout::X64 => Mode::Pte,
            InfoLayout::X86 => Mode::Physical,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = DriverError;
    fn from_str(text: &str) -> Result<Mode, DriverError> {
        match text {
            "iospace" => Ok(Mode::IoSpace),
            "physical" => Ok(Mode::Physical),
            "pte" => Ok(Mode::Pte),
            _ => Err(DriverError::BadMode(text.to_string())),
        }
    }
}

/// The two layouts of WINPMEM_MEMORY_INFO: the structure has a KPCR array
/// of 64 entries in the 64-bit driver and 32 in the 32-bit one, which
/// shifts every later field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoLayout {
    /// The 64-bit driver's (64 KPCR entries).
    X64,
    /// The 32-bit driver's (32 KPCR entries).
    X86,
}

impl InfoLayout {
    /// The layout of the driver matching this process's kernel: a 32-bit
    /// pmem on 64-bit Windows cannot load a driver at all, so the build's
    /// pointer width decides.
    pub fn native() -> InfoLayout {
        if cfg!(target_pointer_width = "64") {
            InfoLayout::X64
        } else {
            InfoLayout::X86
        }
    }

    fn kpcr_count(self) -> usize {
        match self {
            InfoLayout::X64 => 64,
            InfoLayout::X86 => 32,
        }
    }

    /// Offset of PfnDataBase, the first field after the KPCR array.
    fn after_kpcr(self) -> usize {
        0x20 + 8 * self.kpcr_count()
    }

    /// Offset of NumberOfRuns: after NtBuildNumberAddr and 0xFE padding words.
    pub fn number_of_runs_offset(self) -> usize {
        self.after_kpcr() + 4 * 8 + 0xFE * 8
    }

    /// Offset of the first run entry (bytes).
    pub fn runs_offset(self) -> usize {
        self.number_of_runs_offset() + 8
    }

    /// Size of the structure with `runs` run entries.
    pub fn len(self, runs: usize) -> usize {
        self.runs_offset() + runs * RUN_LEN
    }
}

/// What IOCTL_GET_INFO reports, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryInfo {
    /// Kernel facts; `system_time` is left 0 (the driver does not say).
    pub windows: WindowsMetadata,
    /// Kernel virtual address of NtBuildNumber, as the driver reports it.
    pub nt_build_number_addr: u64,
    /// The runs as the driver listed them, sorted.
    pub runs: MemoryMap,
    /// Run-table entries the driver's structure has room for (20 or 300).
    pub run_capacity: usize,
}

/// Why the WinPmem driver's answers can't be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// `--mode` names no mode.
    #[error("unknown mode {0:?}: expected physical, pte or iospace")]
    BadMode(String),
    /// IOCTL_SET_MODE failed.
    #[error("the driver refused mode {mode} (IOCTL_SET_MODE): {source}")]
    SetMode {
        /// The mode asked for.
        mode: Mode,
        /// The ioctl's error.
        source: io::Error,
    },
    /// IOCTL_WRITE_ENABLE was answered as an unknown request: the driver
    /// was built without write support.
    #[error("the driver refused to enable writes (IOCTL_WRITE_ENABLE): it was built without write support ({source}); only test-signed WinPmem builds compiled with write support (PMEM_WRITE_ENABLED) honour it, no released, signed WinPmem driver does")]
    WritesNotSupported {
        /// The ioctl's error.
        source: io::Error,
    },
    /// IOCTL_WRITE_ENABLE failed for another reason.
    #[error("the driver did not enable writes (IOCTL_WRITE_ENABLE): {source}")]
    WriteEnable {
        /// The ioctl's error.
        source: io::Error,
    },
    /// IOCTL_GET_INFO failed.
    #[error("the driver did not report the memory information (IOCTL_GET_INFO): {source}")]
    GetInfo {
        /// The ioctl's error.
        source: io::Error,
    },
    /// IOCTL_GET_INFO returned fewer bytes than the layout has.
    #[error("the driver returned {returned} bytes of memory information, fewer than the {needed} its {layout:?} layout needs: not a WinPmem driver of this architecture")]
    ShortInfo {
        /// Bytes returned.
        returned: usize,
        /// Bytes the layout needs.
        needed: usize,
        /// The layout expected (this build's architecture).
        layout: InfoLayout,
    },
    /// More runs than the driver's table holds: the image would miss RAM.
    #[error("the driver lists {runs} memory runs but its table holds {capacity}{full}: this machine (e.g. Hyper-V dynamic memory) has more runs than this driver can report, so the image would silently miss memory; use a driver with a larger run table", full = if *.runs == *.capacity as u64 { " and is full" } else { "" })]
    TooManyRuns {
        /// Runs the driver says there are.
        runs: u64,
        /// Entries its table holds ([`RUNS_OLD`] or [`RUNS_NEW`]).
        capacity: usize,
    },
    /// The run table is empty.
    #[error("the driver reports no memory runs")]
    NoRuns,
    /// A run is empty, unaligned or past 2^64.
    #[error("memory run {index} ({base:#x}, {bytes:#x} bytes) is {reason}")]
    BadRun {
        /// Its index in the table, from 0.
        index: usize,
        /// Its physical base address.
        base: u64,
        /// Its length (bytes).
        bytes: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two runs overlap.
    #[error("memory runs {previous} and {next} overlap")]
    Overlap {
        /// The earlier run.
        previous: Range,
        /// The run that overlaps it.
        next: Range,
    },
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses the first `returned` bytes of an IOCTL_GET_INFO answer.
///
/// The run table's capacity is what the driver returned room for (capped at
/// 300): a 2.x/3.x driver fills a 20-run structure, 4.x a 300-run one. A
/// table that is full, or a NumberOfRuns above its capacity, means the
/// driver may have dropped runs: that is an error, never a partial map.
pub fn parse_info(buf: &[u8], layout: InfoLayout) -> Result<MemoryInfo, DriverError> {
    let needed = layout.runs_offset();
    if buf.len() < needed {
        return Err(DriverError::ShortInfo {
            returned: buf.len(),
            needed,
            layout,
        });
    }
    let capacity = ((buf.len() - needed) / RUN_LEN).min(RUNS_NEW);
    let count = u64_at(buf, layout.number_of_runs_offset());
    if count == 0 {
        return Err(DriverError::NoRuns);
    }
    if count >= capacity as u64 {
        return Err(DriverError::TooManyRuns {
            runs: count,
            capacity,
        });
    }
    let mut ranges = Vec::with_capacity(count as usize);
    for index in 0..count as usize {
        let at = layout.runs_offset() + index * RUN_LEN;
        let base = u64_at(buf, at);
        let bytes = u64_at(buf, at + 8);
        let bad = |reason| DriverError::BadRun {
            index,
            base,
            bytes,
            reason,
        };
        if base % PAGE_SIZE != 0 || bytes % PAGE_SIZE != 0 {
            return Err(bad("not page-aligned"));
        }
        let end = base.checked_add(bytes).ok_or_else(|| bad("past 2^64"))?;
        ranges.push(Range::new(base, end).ok_or_else(|| bad("empty"))?);
    }
    // MmGetPhysicalMemoryRanges lists runs in ascending order; sort anyway
    // so that only a real overlap is an error.
    ranges.sort();
    let runs = MemoryMap::new(ranges).map_err(|e| match e {
        pmem_core::MemoryMapError::Unsorted { previous, next } => {
            DriverError::Overlap { previous, next }
        }
        _ => DriverError::NoRuns,
    })?;
    let after_kpcr = layout.after_kpcr();
    let processors = (0..layout.kpcr_count())
        .filter(|i| u64_at(buf, 0x20 + i * 8) != 0)
        .count() as u32;
    Ok(MemoryInfo {
        windows: WindowsMetadata {
            cr3: u64_at(buf, 0x00),
            nt_build_number: u64_at(buf, 0x08),
            kernel_base: u64_at(buf, 0x10),
            kdbg: u64_at(buf, 0x18),
            pfn_database: u64_at(buf, after_kpcr),
            ps_loaded_module_list: u64_at(buf, after_kpcr + 8),
            ps_active_process_head: u64_at(buf, after_kpcr + 16),
            // Drivers fill KPCR per processor; never claim zero processors.
            processors: processors.max(1),
            system_time: 0,
        },
        nt_build_number_addr: u64_at(buf, after_kpcr + 24),
        runs,
        run_capacity: capacity,
    })
}

/// The driver's device, as the protocol uses it. The Windows device wraps a
/// handle (DeviceIoControl, SetFilePointerEx + ReadFile); tests use
/// [`testing::FakeDriver`](super::testing::FakeDriver).
pub trait Device: Send {
    /// DeviceIoControl: returns the number of output bytes written.
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> io::Result<usize>;
    /// Seek to `offset` (a physical address) and ReadFile: may return fewer
    /// bytes than asked at an unreadable page.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// Sets the mode, then asks for the memory information.
pub fn handshake<D: Device + ?Sized>(
    device: &mut D,
    mode: Mode,
    layout: InfoLayout,
) -> Result<MemoryInfo, DriverError> {
    device
        .ioctl(IOCTL_SET_MODE, &mode.code().to_le_bytes(), &mut [])
        .map_err(|source| DriverError::SetMode { mode, source })?;
    let mut buf = vec![0u8; layout.len(RUNS_NEW)];
    let returned = device
        .ioctl(IOCTL_GET_INFO, &[], &mut buf)
        .map_err(|source| DriverError::GetInfo { source })?;
    buf.truncate(returned.min(buf.len()));
    parse_info(&buf, layout)
}

/// How an IOCTL the driver has no case for fails: WinPmem answers
/// STATUS_INVALID_PARAMETER (ERROR_INVALID_PARAMETER, 87); other drivers
/// STATUS_INVALID_DEVICE_REQUEST (ERROR_INVALID_FUNCTION, 1).
const UNKNOWN_IOCTL_ERRORS: [i32; 2] = [1, 87];

/// Asks the driver to enable writes to physical memory through its device
/// (IOCTL_WRITE_ENABLE, no input or output buffer).
///
/// The driver flips a switch (a second request turns writes off again) and
/// does not say which way it is set, so send this once, to a driver that
/// was just loaded: it starts with writes off. A driver built without write
/// support (every released, signed one) refuses it:
/// [`DriverError::WritesNotSupported`].
pub fn enable_writes<D: Device + ?Sized>(device: &mut D) -> Result<(), DriverError> {
    device
        .ioctl(IOCTL_WRITE_ENABLE, &[], &mut [])
        .map(drop)
        .map_err(|source| {
            if source
                .raw_os_error()
                .is_some_and(|c| UNKNOWN_IOCTL_ERRORS.contains(&c))
            {
                DriverError::WritesNotSupported { source }
            } else {
                DriverError::WriteEnable { source }
            }
        })
}

/// Windows error codes that mean the device itself is gone, not that a
/// page is unreadable: ERROR_INVALID_FUNCTION, ERROR_INVALID_HANDLE,
/// ERROR_ACCESS_DENIED, ERROR_DEVICE_REMOVED (1617), ERROR_BAD_COMMAND (22).
const FATAL_WINDOWS_ERRORS: [i32; 5] = [1, 5, 6, 22, 1617];

/// The driver's memory as a pmem source: the runs it reported, read through
/// the device. A short or failed read makes the pages from the failure on
/// [`ReadError::Unreadable`]: the pipeline retries them page by page and
/// zero-fills (and records) the pages that still fail, as on Linux.
pub struct DriverMemory<D> {
    device: D,
    map: MemoryMap,
    /// Set by the Ctrl-C handler: the next read fails, the copy stops, and
    /// the driver is unloaded by the caller's guard.
    interrupted: Arc<AtomicBool>,
}

impl<D: Device> DriverMemory<D> {
    /// Reads `map` through `device`; a read stops with an error once
    /// `interrupted` is set.
    pub fn new(device: D, map: MemoryMap, interrupted: Arc<AtomicBool>) -> DriverMemory<D> {
        DriverMemory {
            device,
            map,
            interrupted,
        }
    }

    /// The device, for ioctls after opening.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }
}

impl<D: Device> PhysicalMemory for DriverMemory<D> {
    fn memory_map(&self) -> &MemoryMap {
        &self.map
    }

    fn read_granularity(&self) -> u64 {
        // The driver maps whole pages; the pipeline's chunks stay aligned.
        PAGE_SIZE
    }

    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr + done as u64;
            if self.interrupted.load(Ordering::SeqCst) {
                return Err(ReadError::Fatal {
                    what: "interrupted (Ctrl-C)".into(),
                    addr: at,
                    source: io::Error::from(io::ErrorKind::Interrupted),
                });
            }
            match self.device.read_at(at, &mut buf[done..]) {
                Ok(0) => {
                    return Err(ReadError::Unreadable {
                        addr: at,
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the driver returned a short read",
                        ),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source)
                    if source
                        .raw_os_error()
                        .is_some_and(|c| FATAL_WINDOWS_ERRORS.contains(&c)) =>
                {
                    return Err(ReadError::Fatal {
                        what: format!("reading {DEVICE_PATH}"),
                        addr: at,
                        source,
                    })
                }
                Err(source) => return Err(ReadError::Unreadable { addr: at, source }),
            }
        }
        Ok(())
    }
}

/// Installing and removing the driver's kernel service (the service control
/// manager on Windows, a recorder in tests).
pub trait ServiceControl: Send {
    /// Creates and starts the kernel-driver service for the driver file.
    /// A stale service of the same name (a crashed run) is removed first.
    fn install(&mut self, driver_path: &std::path::Path) -> io::Result<()>;
    /// Stops and deletes the service.
    fn remove(&mut self) -> io::Result<()>;
}

/// A loaded driver that is unloaded when dropped (success, error or
/// Ctrl-C alike), unless [`keep`](Self::keep) was called (`driver load`).
pub struct LoadedDriver<S: ServiceControl> {
    service: S,
    keep: bool,
}

impl<S: ServiceControl> LoadedDriver<S> {
    /// Installs and starts the driver at `driver_path` as a service,
    /// stopped and removed again when dropped.
    pub fn install(mut service: S, driver_path: &std::path::Path) -> io::Result<LoadedDriver<S>> {
        service.install(driver_path)?;
        Ok(LoadedDriver {
            service,
            keep: false,
        })
    }

    /// Leaves the driver loaded after this process (WinPmem's -l).
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Unloads now and reports the outcome (drop only can warn).
    pub fn unload(mut self) -> io::Result<()> {
        self.keep = true;
        self.service.remove()
    }
}

impl<S: ServiceControl> Drop for LoadedDriver<S> {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = self.service.remove() {
                eprintln!("pmem: warning: could not unload the driver service {SERVICE_NAME}: {e}; remove it with `pmem driver unload`");
            }
        }
    }
}

/// `driver load --write`: enables writes on the driver just loaded as
/// `driver`, through its opened `device`, and returns the guard (for
/// [`LoadedDriver::keep`]). The device is closed either way; if writes are
/// not enabled the driver is unloaded too, after the device is closed, so
/// that a refused `--write` leaves nothing loaded.
pub fn enable_writes_after_load<D: Device, S: ServiceControl>(
    driver: LoadedDriver<S>,
    mut device: D,
) -> Result<LoadedDriver<S>, DriverError> {
    let result = enable_writes(&mut device);
    // The switch lives in the driver, not in the handle: closing keeps it.
    drop(device);
    match result {
        Ok(()) => Ok(driver),
        Err(e) => {
            drop(driver);
            Err(e)
        }
    }
}

/// A live Windows source: the device reader and the service guard. Field
/// order is drop order: the device handle closes before the service is
/// stopped, because a driver with an open handle cannot unload.
pub struct DriverSource<D: Device, S: ServiceControl> {
    /// The memory to copy, read through the device.
    pub memory: DriverMemory<D>,
    /// The service pmem loaded (`None`: the driver was already loaded).
    pub driver: Option<LoadedDriver<S>>,
    /// What the driver reported.
    pub info: MemoryInfo,
    /// The mode memory is mapped with.
    pub mode: Mode,
}

impl<D: Device, S: ServiceControl> DriverSource<D, S> {
    /// Sets the mode on the opened device and reads its memory information;
    /// on error everything opened so far is closed and unloaded in order.
    pub fn open(
        mut device: D,
        driver: Option<LoadedDriver<S>>,
        mode: Mode,
        layout: InfoLayout,
        interrupted: Arc<AtomicBool>,
    ) -> Result<DriverSource<D, S>, DriverError> {
        let info = match handshake(&mut device, mode, layout) {
            Ok(info) => info,
            Err(e) => {
                // Explicitly: the handle must close before the unload.
                drop(device);
                drop(driver);
                return Err(e);
            }
        };
        Ok(DriverSource {
            memory: DriverMemory::new(device, info.runs.clone(), interrupted),
            driver,
            info,
            mode,
        })
    }
}

impl<D: Device, S: ServiceControl> PhysicalMemory for DriverSource<D, S> {
    fn memory_map(&self) -> &MemoryMap {
        self.memory.memory_map()
    }
    fn read_granularity(&self) -> u64 {
        self.memory.read_granularity()
    }
    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.memory.read_at(addr, buf)
    }
}
