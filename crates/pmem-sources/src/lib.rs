//! Live physical-memory sources of pmem on Linux: /proc/kcore, /dev/crash,
//! /dev/mem and pmem's own kernel module (/dev/pmem-phys), each bounded by the "System RAM" of /proc/iomem.
//!
//! The parsers ([`iomem`], [`kcore`]) and the logic that turns an opened
//! file into a source are platform-neutral; only [`open`]'s device paths
//! and procfs access are Linux-only. On other systems [`open`] says so.
//!
//! Every source reads whole pages of System RAM only: RAM that a source
//! can't give (a partial page at the end of an iomem range, RAM no kcore
//! segment covers) is listed in [`SourceInfo::not_acquired`], never dropped
//! silently.

pub mod iomem;
pub mod kcore;
pub mod module;
pub mod reader;
// Used by the Linux opener and the tests only.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
mod sources;

#[cfg(target_os = "linux")]
mod linux;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub mod macos;
pub mod windows;

use iomem::{Iomem, IomemError};
use kcore::KcoreError;
use pmem_core::{Arch, MemoryMap, PhysicalMemory, Range, ReadError};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

/// Which live source to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// kcore, then crash, then mem, then module: the first that opens and reads.
    Auto,
    Kcore,
    Crash,
    Mem,
    /// pmem's own kernel module (`pmem module build`), /dev/pmem-phys.
    Module,
}

impl SourceKind {
    /// The order `auto` tries sources in.
    /// The module comes last: the user-space sources need nothing loaded.
    pub const AUTO_ORDER: [SourceKind; 4] = [
        SourceKind::Kcore,
        SourceKind::Crash,
        SourceKind::Mem,
        SourceKind::Module,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Auto => "auto",
            SourceKind::Kcore => "kcore",
            SourceKind::Crash => "crash",
            SourceKind::Mem => "mem",
            SourceKind::Module => "module",
        }
    }

    /// The device or procfs file read by default; `None` for `Auto`.
    pub fn default_path(self) -> Option<&'static str> {
        match self {
            SourceKind::Auto => None,
            SourceKind::Kcore => Some("/proc/kcore"),
            SourceKind::Crash => Some("/dev/crash"),
            SourceKind::Mem => Some("/dev/mem"),
            SourceKind::Module => Some(module::DEVICE_PATH),
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid source {text:?}: {reason}")]
pub struct ParseSourceError {
    pub text: String,
    pub reason: &'static str,
}

impl FromStr for SourceKind {
    type Err = ParseSourceError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(SourceKind::Auto),
            "kcore" => Ok(SourceKind::Kcore),
            "crash" => Ok(SourceKind::Crash),
            "mem" => Ok(SourceKind::Mem),
            "module" => Ok(SourceKind::Module),
            _ => Err(ParseSourceError {
                text: text.to_string(),
                reason: "expected auto, kcore, crash, mem or module",
            }),
        }
    }
}

/// What to open. `path` overrides the kind's default device path (tests
/// and copies of kcore); `iomem_path` overrides /proc/iomem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRequest {
    pub kind: SourceKind,
    pub path: Option<PathBuf>,
    pub iomem_path: Option<PathBuf>,
}

impl Default for SourceRequest {
    fn default() -> Self {
        SourceRequest {
            kind: SourceKind::Auto,
            path: None,
            iomem_path: None,
        }
    }
}

/// Parses `KIND[:PATH]`, e.g. `kcore`, `crash:/dev/crash`, `kcore:/tmp/kcore`.
/// `auto` takes no path: it tries several devices. `iomem_path` stays `None`.
impl FromStr for SourceRequest {
    type Err = ParseSourceError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, path) = match text.split_once(':') {
            Some((kind, path)) => (kind, Some(path)),
            None => (text, None),
        };
        let kind: SourceKind = kind.parse().map_err(|_| ParseSourceError {
            text: text.to_string(),
            reason: "expected auto, kcore[:PATH], crash[:PATH], mem[:PATH] or module[:PATH]",
        })?;
        let bad = |reason| ParseSourceError {
            text: text.to_string(),
            reason,
        };
        match path {
            Some(_) if kind == SourceKind::Auto => {
                Err(bad("auto tries the default devices and takes no path"))
            }
            Some("") => Err(bad("empty path after ':'")),
            path => Ok(SourceRequest {
                kind,
                path: path.map(PathBuf::from),
                iomem_path: None,
            }),
        }
    }
}

/// System RAM the source could not give, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAcquired {
    pub range: Range,
    pub reason: String,
}

/// What an opened source is, for the manifest and the image metadata.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// The source actually used (never `Auto`).
    pub kind: SourceKind,
    pub path: PathBuf,
    /// kcore's e_machine; the host's for /dev/crash and /dev/mem.
    pub arch: Arch,
    /// Kernel virtual address of physical 0 in the direct map (kcore only).
    pub direct_map_offset: Option<u64>,
    /// Descriptor of kcore's VMCOREINFO note, when it has one.
    pub vmcoreinfo: Option<Vec<u8>>,
    /// System RAM as iomem lists it, not clipped to pages.
    pub system_ram: MemoryMap,
    pub iomem: Iomem,
    /// System RAM outside the source's memory map, sorted by address.
    pub not_acquired: Vec<NotAcquired>,
    /// For `auto`: the sources tried before this one and why each was skipped.
    pub skipped: Vec<(SourceKind, String)>,
    /// The version of pmem's kernel module (module source only).
    pub module_version: Option<String>,
}

/// A source ready to copy: its memory map is page-aligned System RAM.
pub struct OpenedSource {
    pub memory: Box<dyn PhysicalMemory>,
    pub info: SourceInfo,
}

impl fmt::Debug for OpenedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedSource")
            .field("memory_map", self.memory.memory_map())
            .field("info", &self.info)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("live memory sources exist only on Linux; this operating system has none of /proc/kcore, /dev/crash, /dev/mem")]
    UnsupportedOs,
    #[error("cannot read the memory map {}: {source}", .path.display())]
    IomemRead { path: PathBuf, source: io::Error },
    #[error("cannot parse the memory map {}: {source}", .path.display())]
    IomemParse { path: PathBuf, source: IomemError },
    #[error("{} shows every address as zero: the kernel hides physical addresses from processes without CAP_SYS_ADMIN; run as root", .path.display())]
    IomemHidden { path: PathBuf },
    #[error("{} lists no \"System RAM\"", .path.display())]
    NoSystemRam { path: PathBuf },
    #[error("{kind} takes no path")]
    PathNotAllowed { kind: SourceKind },
    #[error("cannot open {} ({kind} source): {source}{hint}", .path.display())]
    Open {
        kind: SourceKind,
        path: PathBuf,
        source: io::Error,
        /// Advice for the user, starting with "; " or empty.
        hint: String,
    },
    #[error(transparent)]
    ModuleNode(#[from] module::NodeError),
    #[error("{} is not a usable kcore: {source}", .path.display())]
    Kcore { path: PathBuf, source: KcoreError },
    #[error("{} ({kind} source) can read none of the System RAM", .path.display())]
    NothingReadable { kind: SourceKind, path: PathBuf },
    #[error("{} refuses to read RAM above 1 MiB (EPERM at {addr:#x}): the kernel enforces STRICT_DEVMEM, so it could only give a mostly empty image; use /proc/kcore or /dev/crash", .path.display())]
    StrictDevmem { path: PathBuf, addr: u64 },
    /// None of the pages probed could be read (the first one's error), or
    /// the source went away while probed.
    #[error("probe read of {} ({kind} source) failed: {source}", .path.display())]
    Probe {
        kind: SourceKind,
        path: PathBuf,
        source: ReadError,
    },
    #[error("no memory source could be used:{}", list_skipped(.skipped))]
    NoSourceAvailable { skipped: Vec<(SourceKind, String)> },
}

fn list_skipped(skipped: &[(SourceKind, String)]) -> String {
    skipped
        .iter()
        .map(|(kind, why)| format!("\n  {kind}: {why}"))
        .collect()
}

/// Opens the requested source: reads iomem (default /proc/iomem), opens the
/// device, maps it and probe-reads it: its first page, and when that fails
/// up to 15 more spread over the map; one that reads is enough (a bad page
/// is the copy's to record, never a reason to refuse a source). For `auto`,
/// tries kcore, crash, mem and module in turn and records why each skipped
/// one failed.
#[cfg(target_os = "linux")]
pub fn open(request: &SourceRequest) -> Result<OpenedSource, SourceError> {
    linux::open(request)
}

/// Live sources exist only on Linux.
#[cfg(not(target_os = "linux"))]
pub fn open(_request: &SourceRequest) -> Result<OpenedSource, SourceError> {
    Err(SourceError::UnsupportedOs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(target_os = "linux"))]
    #[test]
    fn open_is_unsupported() {
        assert!(matches!(
            open(&SourceRequest::default()),
            Err(SourceError::UnsupportedOs)
        ));
    }

    #[test]
    fn parses_requests() {
        let r: SourceRequest = "kcore:/tmp/x:y".parse().unwrap();
        assert_eq!(r.kind, SourceKind::Kcore);
        assert_eq!(r.path, Some(PathBuf::from("/tmp/x:y")));
        let r: SourceRequest = "mem".parse().unwrap();
        assert_eq!((r.kind, r.path), (SourceKind::Mem, None));
        let r: SourceRequest = "module".parse().unwrap();
        assert_eq!((r.kind, r.path), (SourceKind::Module, None));
        assert_eq!(
            SourceKind::Module.default_path(),
            Some("/dev/pmem-phys"),
            "never /dev/pmemN (NVDIMM)"
        );
        assert_eq!(SourceKind::AUTO_ORDER.last(), Some(&SourceKind::Module));
        assert_eq!(
            "auto".parse::<SourceRequest>().unwrap(),
            SourceRequest::default()
        );
        for bad in ["auto:/dev/mem", "kcore:", "disk", "", "Kcore"] {
            assert!(bad.parse::<SourceRequest>().is_err(), "{bad}");
        }
        for kind in [
            SourceKind::Auto,
            SourceKind::Kcore,
            SourceKind::Crash,
            SourceKind::Mem,
            SourceKind::Module,
        ] {
            assert_eq!(kind.to_string().parse::<SourceKind>().unwrap(), kind);
        }
    }
}
