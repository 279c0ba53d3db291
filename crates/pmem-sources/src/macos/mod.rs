//! macOS acquisition through the MacPmem/OSXPMem kext (loaded by the user;
//! pmem ships no kext): `/dev/pmem` reads physical memory by offset,
//! `/dev/pmem_info` describes the machine.
//!
//! Everything here except [`live`] is platform-neutral and tested on Linux
//! against recorded samples of `/dev/pmem_info`: the parser of its text
//! ([`PmemInfo::parse`]), the choice of ranges to read (the EFI memory map
//! less the types OSXPMem never read) and the source built over any
//! positional reader. [`live`] (macOS only) opens the two devices.
//!
//! `/dev/pmem_info` is YAML 1.2 that the kext prints with a fixed layout
//! (MacPmem's meta.cpp, pmem API version 2):
//!
//! ```text
//! %YAML 1.2
//! ---
//! meta:
//!   pmem_api_version: 2
//!   cr3: 5773611222
//!   ...
//!   kernel_version: "Darwin Kernel Version 14.4.0: ..."
//! records:
//!   - purpose: "(EFI) EfiConventionalMemory"
//!     type: "efi_range"
//!     efi_type: "EfiConventionalMemory"
//!     start: 1048576
//!     length: 528384
//!     hw_informant: false
//! ```
//!
//! Numbers are decimal; `records` holds EFI ranges (the boot loader's EFI
//! memory map) and PCI ranges (device memory, never read). A full YAML
//! parser would accept far more than the kext writes; this one accepts that
//! layout (plus hex numbers and `'`-quoted strings) and names the line of
//! anything else.

#[cfg(target_os = "macos")]
pub mod live;

use crate::info::NotAcquired;
use crate::reader::{FileMemory, Preads, ReadAt};
use pmem_core::{MemoryMap, PhysicalMemory, Range, ReadError, PAGE_SIZE};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default device paths of the kext: the memory device, read at physical
/// addresses...
pub const DEVICE_PATH: &str = "/dev/pmem";
/// ...and the text that describes it (memory map, CR3, kernel version).
pub const INFO_PATH: &str = "/dev/pmem_info";
/// Largest info text read: the kext caps its buffer at 64 KiB.
pub const MAX_INFO_LEN: u64 = 1 << 20;
/// Most records accepted (a Mac's EFI map has a few hundred).
pub const MAX_RECORDS: usize = 65536;

/// EFI memory types OSXPMem did not read: not RAM, or RAM the firmware
/// marked unusable. Reading MMIO can hang a machine.
pub const SKIPPED_EFI_TYPES: [&str; 4] = [
    "EfiReservedMemoryType",
    "EfiUnusableMemory",
    "EfiMemoryMappedIO",
    "EfiMemoryMappedIOPortSpace",
];

/// EFI types the kext can name; anything else (its "EfiMaxMemoryType" for
/// unknown numbers included) is not read.
pub const READABLE_EFI_TYPES: [&str; 10] = [
    "EfiLoaderCode",
    "EfiLoaderData",
    "EfiBootServicesCode",
    "EfiBootServicesData",
    "EfiRuntimeServicesCode",
    "EfiRuntimeServicesData",
    "EfiConventionalMemory",
    "EfiACPIReclaimMemory",
    "EfiACPIMemoryNVS",
    "EfiPalCode",
];

/// A line of `/dev/pmem_info` that does not fit the kext's layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct InfoError {
    /// 1-based.
    pub line: usize,
    /// What is wrong with the line.
    pub reason: String,
}

/// One entry of `records`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// What the kext says the range is for, as written.
    pub purpose: String,
    /// "efi_range" or "pci_range".
    pub kind: String,
    /// EFI type name (EFI records) or PCI type name (PCI records).
    pub subtype: String,
    /// Physical address of the first byte.
    pub start: u64,
    /// Bytes.
    pub length: u64,
    /// The kext's `hw_informant` flag, as written.
    pub hw_informant: bool,
}

impl Record {
    /// Whether this is an EFI memory-map range (not a PCI one).
    pub fn is_efi(&self) -> bool {
        self.kind == "efi_range"
    }

    /// Whether pmem reads this range: EFI types OSXPMem read, never PCI.
    pub fn readable(&self) -> bool {
        self.is_efi() && READABLE_EFI_TYPES.contains(&self.subtype.as_str())
    }

    /// `[start, start + length)`, `None` when empty or past 2^64.
    pub fn range(&self) -> Option<Range> {
        Range::new(self.start, self.start.checked_add(self.length)?)
    }
}

/// The parsed `/dev/pmem_info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PmemInfo {
    /// The kext's info format version.
    pub api_version: u64,
    /// The CR3 register as the kext read it (some process's page tables).
    pub cr3: u64,
    /// The page-aligned physical address of that directory table base.
    pub dtb: u64,
    /// The kernel's KASLR slide (bytes added to its link addresses).
    pub kaslr_slide: u64,
    /// The kernel's version string.
    pub kernel_version: String,
    /// Physical address of the kernel image.
    pub kernel_poffset: u64,
    /// Physical memory size the kernel reports (bytes).
    pub phys_mem_size: u64,
    /// Physical address of the PCI configuration space.
    pub pci_config_space_base: u64,
    /// Physical address of the EFI memory map.
    pub mmap_poffset: u64,
    /// EFI memory descriptor version.
    pub mmap_desc_version: u64,
    /// Size of the EFI memory map (bytes).
    pub mmap_size: u64,
    /// Size of one EFI memory descriptor (bytes).
    pub mmap_desc_size: u64,
    /// `meta` keys this parser has no field for (newer or older kexts, such
    /// as `version_poffset`), kept as written for the manifest.
    pub other: BTreeMap<String, String>,
    /// The memory map: EFI and PCI ranges, in the order listed.
    pub records: Vec<Record>,
}

/// A scalar as the kext writes it: a quoted string or a bare word.
fn unquote(value: &str) -> &str {
    let v = value.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

fn number(value: &str, line: usize, key: &str) -> Result<u64, InfoError> {
    let v = unquote(value);
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| InfoError {
        line,
        reason: format!("{key}: {v:?} is not an unsigned 64-bit number"),
    })
}

fn boolean(value: &str, line: usize, key: &str) -> Result<bool, InfoError> {
    match unquote(value) {
        "true" | "True" | "1" => Ok(true),
        "false" | "False" | "0" => Ok(false),
        v => Err(InfoError {
            line,
            reason: format!("{key}: {v:?} is not true or false"),
        }),
    }
}

#[derive(PartialEq)]
enum Section {
    Start,
    Meta,
    Records,
}

impl PmemInfo {
    /// Parses the text of `/dev/pmem_info`.
    pub fn parse(text: &str) -> Result<PmemInfo, InfoError> {
        let mut info = PmemInfo::default();
        let mut section = Section::Start;
        let mut seen_meta = false;
        let mut required: BTreeMap<&str, bool> = [
            "pmem_api_version",
            "cr3",
            "dtb_off",
            "kaslr_slide",
            "kernel_version",
        ]
        .into_iter()
        .map(|k| (k, false))
        .collect();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let bad = |reason: String| InfoError { line, reason };
            let trimmed = raw.trim_end_matches(['\r', '\0']);
            let content = trimmed.trim_start();
            if content.is_empty()
                || content.starts_with('#')
                || content.starts_with('%')
                || content == "---"
                || content == "..."
            {
                continue;
            }
            if !trimmed.starts_with(' ') && !trimmed.starts_with('-') {
                // A top-level key.
                section = match content {
                    "meta:" => {
                        seen_meta = true;
                        Section::Meta
                    }
                    "records:" | "records: []" => Section::Records,
                    other => return Err(bad(format!("unexpected top-level line {other:?}"))),
                };
                continue;
            }
            let (item_start, entry) = match content.strip_prefix("- ") {
                Some(rest) => (true, rest.trim_start()),
                None => (false, content),
            };
            let (key, value) = entry
                .split_once(':')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| bad(format!("expected \"key: value\", found {content:?}")))?;
            match section {
                Section::Start => return Err(bad("a value before \"meta:\"".into())),
                Section::Meta => {
                    if item_start {
                        return Err(bad("a list item inside \"meta:\"".into()));
                    }
                    if let Some(seen) = required.get_mut(key) {
                        *seen = true;
                    }
                    match key {
                        "pmem_api_version" => info.api_version = number(value, line, key)?,
                        "cr3" => info.cr3 = number(value, line, key)?,
                        "dtb_off" => info.dtb = number(value, line, key)?,
                        "kaslr_slide" => info.kaslr_slide = number(value, line, key)?,
                        "kernel_version" => info.kernel_version = unquote(value).to_string(),
                        "kernel_poffset" => info.kernel_poffset = number(value, line, key)?,
                        "phys_mem_size" => info.phys_mem_size = number(value, line, key)?,
                        "pci_config_space_base" => {
                            info.pci_config_space_base = number(value, line, key)?
                        }
                        "mmap_poffset" => info.mmap_poffset = number(value, line, key)?,
                        "mmap_desc_version" => info.mmap_desc_version = number(value, line, key)?,
                        "mmap_size" => info.mmap_size = number(value, line, key)?,
                        "mmap_desc_size" => info.mmap_desc_size = number(value, line, key)?,
                        _ => {
                            info.other
                                .insert(key.to_string(), unquote(value).to_string());
                        }
                    }
                }
                Section::Records => {
                    if item_start {
                        if info.records.len() >= MAX_RECORDS {
                            return Err(bad(format!("more than {MAX_RECORDS} records")));
                        }
                        info.records.push(Record::default());
                    }
                    let record = info
                        .records
                        .last_mut()
                        .ok_or_else(|| bad("a record field before the first \"- \"".into()))?;
                    match key {
                        "purpose" => record.purpose = unquote(value).to_string(),
                        "type" => record.kind = unquote(value).to_string(),
                        "efi_type" | "pci_type" => record.subtype = unquote(value).to_string(),
                        "start" => record.start = number(value, line, key)?,
                        "length" => record.length = number(value, line, key)?,
                        "hw_informant" => record.hw_informant = boolean(value, line, key)?,
                        // Fields of later kexts are not needed to read memory.
                        _ => {}
                    }
                }
            }
        }
        if !seen_meta {
            return Err(InfoError {
                line: 1,
                reason: "no \"meta:\" section: not MacPmem's /dev/pmem_info".into(),
            });
        }
        if let Some((key, _)) = required.iter().find(|(_, seen)| !**seen) {
            return Err(InfoError {
                line: text.lines().count(),
                reason: format!("\"meta:\" lacks {key}"),
            });
        }
        Ok(info)
    }

    /// What to read: readable EFI ranges clipped inward to whole pages and
    /// merged, and the parts of them that clipping left out.
    pub fn memory_map(&self) -> (MemoryMap, Vec<NotAcquired>) {
        let mut ranges = Vec::new();
        let mut clipped = Vec::new();
        for record in self.records.iter().filter(|r| r.readable()) {
            let Some(range) = record.range() else {
                continue;
            };
            let start = range.start.checked_next_multiple_of(PAGE_SIZE);
            let end = range.end / PAGE_SIZE * PAGE_SIZE;
            match start.and_then(|s| Range::new(s, end)) {
                Some(inner) => {
                    ranges.push(inner);
                    if let Some(head) = Range::new(range.start, inner.start) {
                        clipped.push(head);
                    }
                    if let Some(tail) = Range::new(inner.end, range.end) {
                        clipped.push(tail);
                    }
                }
                None => clipped.push(range),
            }
        }
        let map = MemoryMap::normalized(ranges);
        // A partial page clipped from one record may be covered by another.
        let not_acquired = clipped
            .into_iter()
            .filter(|r| !map.covers(r.start, r.len()))
            .map(|range| NotAcquired {
                range,
                reason: "partial page: /dev/pmem is read in whole pages".into(),
            })
            .collect();
        (map, not_acquired)
    }
}

/// Why the macOS source cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MacosError {
    /// The device or info file could not be opened or read.
    #[error("cannot read {}: {source}; is the MacPmem kext loaded (sudo kextload MacPmem.kext) and are you root?", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The open's or read's error.
        source: std::io::Error,
    },
    /// The info file is larger than [`MAX_INFO_LEN`].
    #[error("{} is larger than {MAX_INFO_LEN} bytes: not MacPmem's info device", .path.display())]
    InfoTooLarge {
        /// The info file.
        path: PathBuf,
    },
    /// The info file does not parse.
    #[error("{}: {source}", .path.display())]
    Info {
        /// The info file.
        path: PathBuf,
        /// The line that does not parse.
        source: InfoError,
    },
    /// The info lists no range pmem reads.
    #[error("{}: the EFI memory map lists no readable memory", .path.display())]
    NoMemory {
        /// The info file.
        path: PathBuf,
    },
    /// No probed page of the device could be read.
    #[error("probe read of {} failed: {source}", .path.display())]
    Probe {
        /// The device.
        path: PathBuf,
        /// The first probe read's error.
        source: ReadError,
    },
}

/// `/dev/pmem` (or anything read like it) with the info that describes it.
pub struct MacSource {
    /// The memory to copy: the readable EFI ranges, whole pages.
    pub memory: Box<dyn PhysicalMemory>,
    /// The parsed info.
    pub info: PmemInfo,
    /// The device read.
    pub device_path: PathBuf,
    /// The info file read.
    pub info_path: PathBuf,
    /// Clipped partial pages of readable EFI ranges.
    pub not_acquired: Vec<NotAcquired>,
}

impl MacSource {
    /// Builds the source from the info text and the opened memory device,
    /// which is read by physical address, and probe-reads its first page.
    pub fn new<F: ReadAt + Send + 'static>(
        info_text: &str,
        info_path: &Path,
        device: F,
        device_path: &Path,
    ) -> Result<MacSource, MacosError> {
        let info = PmemInfo::parse(info_text).map_err(|source| MacosError::Info {
            path: info_path.into(),
            source,
        })?;
        let (map, not_acquired) = info.memory_map();
        if map.is_empty() {
            return Err(MacosError::NoMemory {
                path: info_path.into(),
            });
        }
        // /dev/pmem is the physical address space: file offset = address.
        let mut memory = FileMemory::device(device, device_path.into(), map, Preads::AnyLength);
        crate::devices::probe(&mut memory).map_err(|source| MacosError::Probe {
            path: device_path.into(),
            source,
        })?;
        Ok(MacSource {
            memory: Box::new(memory),
            info,
            device_path: device_path.into(),
            info_path: info_path.into(),
            not_acquired,
        })
    }
}

/// The kext's devices for `--source` (`auto` or `macpmem[:PATH]`, PATH
/// replacing /dev/pmem) and `--iomem` (replacing /dev/pmem_info); `Err`
/// says what the source may be.
pub fn device_paths(source: &str, info: Option<&Path>) -> Result<(PathBuf, PathBuf), &'static str> {
    let device = match source.split_once(':') {
        Some(("macpmem", path)) if !path.is_empty() => path.into(),
        None if source == "auto" || source == "macpmem" => DEVICE_PATH.into(),
        _ => {
            return Err(
                "on macOS the source is auto or macpmem[:PATH] (the MacPmem kext's /dev/pmem)",
            )
        }
    };
    let info = info.map_or_else(|| INFO_PATH.into(), Path::to_path_buf);
    Ok((device, info))
}

#[cfg(test)]
mod tests;
