//! The image formats pmem knows, by the names the CLI and the manifest use.

use std::fmt;
use std::str::FromStr;

/// Largest symbol bundle ([`pmem_core::Plan::symbols`]) an image carries,
/// in bytes: readers load it whole, so a bound keeps a hostile image from
/// claiming gigabytes, and writers refuse a larger one. Real bundles
/// (BTF, kallsyms, banner) are 5 to 20 MB.
pub const MAX_SYMBOLS: u64 = 128 << 20;

/// The image formats pmem writes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// LiME v1: a 32-byte header before each range.
    Lime,
    /// Zero-padded raw: file offset == physical address.
    Raw,
    /// ELF64 core file, one `PT_LOAD` per range.
    Elf,
    /// Windows crash dump; needs Windows metadata and page-aligned ranges.
    Dmp,
    /// AVML v2 compressed LiME (`--format lime --compress snappy`).
    Avml,
    /// Mach-O 64-bit core (OSXPMem).
    Macho,
    /// AFF4 Standard volume (pmem 2.x/3.x imagers).
    Aff4,
}

impl Format {
    /// Every format, in the order the CLI lists them.
    pub const ALL: [Format; 7] = [
        Format::Lime,
        Format::Raw,
        Format::Elf,
        Format::Dmp,
        Format::Avml,
        Format::Macho,
        Format::Aff4,
    ];

    /// The name the CLI and the manifest use.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Lime => "lime",
            Format::Raw => "raw",
            Format::Elf => "elf",
            Format::Dmp => "dmp",
            Format::Avml => "avml",
            Format::Macho => "macho",
            Format::Aff4 => "aff4",
        }
    }

    /// Whether an image of this format carries the plan's symbol bundle
    /// inside it (an ELF note, a Mach-O `LC_NOTE`, an AFF4 member); the
    /// others have no place for it.
    pub fn carries_symbols(self) -> bool {
        match self {
            Format::Elf | Format::Macho | Format::Aff4 => true,
            Format::Lime | Format::Raw | Format::Dmp | Format::Avml => false,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name that [`Format::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown image format {0:?}: expected one of lime, raw, elf, dmp, avml, macho, aff4")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Format, UnknownFormat> {
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownFormat(s.to_string()))
    }
}
