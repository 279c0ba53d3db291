//! Why a Linux source could not be opened ([`SourceError`]).

use crate::iomem::IomemError;
use crate::kcore::KcoreError;
use crate::kind::SourceKind;
use crate::module;
use pmem_core::ReadError;
use std::io;
use std::path::PathBuf;

/// Why a Linux source could not be opened. Each message names the file
/// and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// [`open`](crate::open) was called on an OS without the Linux sources.
    #[error("live memory sources exist only on Linux; this operating system has none of /proc/kcore, /dev/crash, /dev/mem")]
    UnsupportedOs,
    /// The memory map (/proc/iomem or its stand-in) could not be read.
    #[error("cannot read the memory map {}: {source}", .path.display())]
    IomemRead {
        /// The memory map's path.
        path: PathBuf,
        /// The read's error.
        source: io::Error,
    },
    /// The memory map is not in /proc/iomem's format.
    #[error("cannot parse the memory map {}: {source}", .path.display())]
    IomemParse {
        /// The memory map's path.
        path: PathBuf,
        /// The line that did not parse, and why.
        source: IomemError,
    },
    /// Every address in the memory map is zero: the process lacks
    /// CAP_SYS_ADMIN.
    #[error("{} shows every address as zero: the kernel hides physical addresses from processes without CAP_SYS_ADMIN; run as root", .path.display())]
    IomemHidden {
        /// The memory map's path.
        path: PathBuf,
    },
    /// The memory map has no "System RAM" range: nothing to acquire.
    #[error("{} lists no \"System RAM\"", .path.display())]
    NoSystemRam {
        /// The memory map's path.
        path: PathBuf,
    },
    /// A path was given with a kind that takes none (`auto`).
    #[error("{kind} takes no path")]
    PathNotAllowed {
        /// The kind given.
        kind: SourceKind,
    },
    /// The device or file could not be opened.
    #[error("cannot open {} ({kind} source): {source}{hint}", .path.display())]
    Open {
        /// The source being opened.
        kind: SourceKind,
        /// Its device or file.
        path: PathBuf,
        /// The open's error.
        source: io::Error,
        /// Advice for the user, starting with "; " or empty.
        hint: String,
    },
    /// pmem's kernel module is loaded but its device node is missing or
    /// wrong.
    #[error(transparent)]
    ModuleNode(#[from] module::NodeError),
    /// The kcore file is not an ELF core the way the kernel writes it.
    #[error("{} is not a usable kcore: {source}", .path.display())]
    Kcore {
        /// The kcore file.
        path: PathBuf,
        /// What is wrong with it.
        source: KcoreError,
    },
    /// The source's memory map covers none of the System RAM.
    #[error("{} ({kind} source) can read none of the System RAM", .path.display())]
    NothingReadable {
        /// The source.
        kind: SourceKind,
        /// Its device or file.
        path: PathBuf,
    },
    /// /dev/mem under STRICT_DEVMEM: only the first MiB would read.
    #[error("{} refuses to read RAM above 1 MiB (EPERM at {addr:#x}): the kernel enforces STRICT_DEVMEM, so it could only give a mostly empty image; use /proc/kcore or /dev/crash", .path.display())]
    StrictDevmem {
        /// The device (/dev/mem or a copy's path).
        path: PathBuf,
        /// The physical address whose read was refused.
        addr: u64,
    },
    /// None of the pages probed could be read (the first one's error), or
    /// the source went away while probed.
    #[error("probe read of {} ({kind} source) failed: {source}", .path.display())]
    Probe {
        /// The source.
        kind: SourceKind,
        /// Its device or file.
        path: PathBuf,
        /// The first probe read's error.
        source: ReadError,
    },
    /// `auto` tried every source and none could be used.
    #[error("no memory source could be used:{}", list_skipped(.skipped))]
    NoSourceAvailable {
        /// Each source tried, in order, and why it was skipped.
        skipped: Vec<(SourceKind, String)>,
    },
}

fn list_skipped(skipped: &[(SourceKind, String)]) -> String {
    skipped
        .iter()
        .map(|(kind, why)| format!("\n  {kind}: {why}"))
        .collect()
}
