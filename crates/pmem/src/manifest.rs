//! The JSON manifest written next to every image: what was acquired, from
//! where, what could not be read, and the hashes that `pmem verify` checks.

use anyhow::{Context, Result};
use pmem_core::{MemoryMap, PageRun, Range, WindowsMetadata};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A physical range as the manifest writes it: hex start, inclusive hex
/// last address (as /proc/iomem and LiME do), and the byte count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeJson {
    pub start: String,
    pub last: String,
    pub bytes: u64,
}

impl From<&Range> for RangeJson {
    fn from(r: &Range) -> Self {
        RangeJson {
            start: format!("{:#x}", r.start),
            last: format!("{:#x}", r.last()),
            bytes: r.len(),
        }
    }
}

impl RangeJson {
    pub fn to_range(&self) -> Result<Range> {
        let start = parse_hex(&self.start)?;
        let last = parse_hex(&self.last)?;
        let range = Range::from_inclusive(start, last)
            .with_context(|| format!("range {}-{} is reversed", self.start, self.last))?;
        anyhow::ensure!(
            range.len() == self.bytes,
            "range {}-{} says {} bytes but spans {}",
            self.start,
            self.last,
            self.bytes,
            range.len()
        );
        Ok(range)
    }
}

pub fn parse_hex(text: &str) -> Result<u64> {
    let digits = text
        .strip_prefix("0x")
        .with_context(|| format!("address {text:?} lacks the 0x prefix"))?;
    u64::from_str_radix(digits, 16).with_context(|| format!("address {text:?} is not hex"))
}

pub fn ranges_json(map: &MemoryMap) -> Vec<RangeJson> {
    map.ranges().iter().map(RangeJson::from).collect()
}

pub fn map_from_json(ranges: &[RangeJson]) -> Result<MemoryMap> {
    let ranges = ranges
        .iter()
        .map(RangeJson::to_range)
        .collect::<Result<Vec<_>>>()?;
    Ok(MemoryMap::new(ranges)?)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotAcquiredJson {
    #[serde(flatten)]
    pub range: RangeJson,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PageRunJson {
    pub start: String,
    pub pages: u64,
}

impl From<&PageRun> for PageRunJson {
    fn from(run: &PageRun) -> Self {
        PageRunJson {
            start: format!("{:#x}", run.start),
            pages: run.pages,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostJson {
    pub hostname: String,
    pub kernel_release: String,
    pub arch: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkippedJson {
    pub kind: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceJson {
    /// kcore, crash, mem, or image (for `convert`).
    pub kind: String,
    pub path: String,
    /// Format of the input image when kind is "image".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default)]
    pub skipped: Vec<SkippedJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_map_offset: Option<String>,
    #[serde(default)]
    pub vmcoreinfo: bool,
    /// Version of pmem's kernel module when kind is "module".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_version: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BytesJson {
    /// Logical bytes of memory in the image's ranges.
    pub memory: u64,
    /// Of those, bytes read and found to be zero (not the unreadable ones).
    pub zero: u64,
    /// Length of the image file as written.
    pub image: u64,
}

/// What is known before the first byte is copied. Embedded as the pmem
/// note of ELF images, so an image carries its origin into `convert`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Origin {
    pub pmem_version: String,
    pub host: HostJson,
    pub source: SourceJson,
    /// "System RAM" of the machine (or of the input image) before clipping.
    pub system_ram: Vec<RangeJson>,
    pub not_acquired: Vec<NotAcquiredJson>,
    pub started_at: String,
    /// Windows kernel metadata (WinPmem driver, or a crash dump's header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<WindowsJson>,
    /// What the MacPmem kext's /dev/pmem_info said (macOS acquisitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macos: Option<crate::macos::MacosJson>,
}

/// [`WindowsMetadata`] as the manifest and the ELF pmem note write it:
/// addresses in hex, the acquisition time as a FILETIME (what a crash dump
/// header's SystemTime holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowsJson {
    pub cr3: String,
    pub nt_build_number: String,
    pub build: u32,
    pub kernel_base: String,
    pub kdbg: String,
    pub pfn_database: String,
    pub ps_loaded_module_list: String,
    pub ps_active_process_head: String,
    pub processors: u32,
    pub system_time_filetime: u64,
    /// Driver access mode (physical, pte, iospace) for live acquisitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl From<&WindowsMetadata> for WindowsJson {
    fn from(w: &WindowsMetadata) -> Self {
        WindowsJson {
            cr3: format!("{:#x}", w.cr3),
            nt_build_number: format!("{:#x}", w.nt_build_number),
            build: w.build(),
            kernel_base: format!("{:#x}", w.kernel_base),
            kdbg: format!("{:#x}", w.kdbg),
            pfn_database: format!("{:#x}", w.pfn_database),
            ps_loaded_module_list: format!("{:#x}", w.ps_loaded_module_list),
            ps_active_process_head: format!("{:#x}", w.ps_active_process_head),
            processors: w.processors,
            system_time_filetime: w.system_time,
            mode: None,
        }
    }
}

impl WindowsJson {
    pub fn to_metadata(&self) -> Result<WindowsMetadata> {
        Ok(WindowsMetadata {
            cr3: parse_hex(&self.cr3)?,
            nt_build_number: parse_hex(&self.nt_build_number)?,
            kernel_base: parse_hex(&self.kernel_base)?,
            kdbg: parse_hex(&self.kdbg)?,
            pfn_database: parse_hex(&self.pfn_database)?,
            ps_loaded_module_list: parse_hex(&self.ps_loaded_module_list)?,
            ps_active_process_head: parse_hex(&self.ps_active_process_head)?,
            processors: self.processors,
            system_time: self.system_time_filetime,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(flatten)]
    pub origin: Origin,
    /// True only when every planned range was written and the image was
    /// committed (flushed and synced).
    pub complete: bool,
    pub error: Option<String>,
    pub format: String,
    /// Ranges the image holds.
    pub ranges: Vec<RangeJson>,
    pub unreadable_pages: Vec<PageRunJson>,
    pub unreadable_page_count: u64,
    pub bytes: BytesJson,
    pub image_sha256: Option<String>,
    pub memory_sha256: Option<String>,
    pub finished_at: Option<String>,
    pub seconds: Option<f64>,
    /// "snappy" for AVML compressed LiME (format "avml"), "zstd" for an
    /// image written as one zstd stream; absent for uncompressed images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// What went differently than asked (a fallback to plain LiME).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// age encryption of the image (and of this manifest) with the hashes
    /// of the ciphertext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::upload::EncryptionJson>,
}

/// Where the manifest of `image` lives by default: `IMAGE.json`.
pub fn default_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

pub fn read(path: &Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading manifest {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing manifest {}", path.display()))
}

/// Writes the manifest, 0600 like the image (it names the machine and its
/// memory layout), whole: see [`replace_file`]. Without `overwrite` an
/// existing file at `path` is refused; with it, the earlier manifest is
/// replaced.
pub fn write(path: &Path, manifest: &Manifest, overwrite: bool) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(manifest)?;
    text.push(b'\n');
    let text = crate::upload::seal(text)?;
    match replace_file(path, &text, overwrite) {
        // A full disk has no room for a second copy, but the earlier
        // manifest's own blocks can take the new one (about as long): an
        // incomplete image's manifest must say why.
        Err(e) if overwrite && is_out_of_space(&e) => rewrite_in_place(path, &text)
            .with_context(|| format!("writing manifest {} (the disk is full)", path.display())),
        written => written.with_context(|| format!("writing manifest {}", path.display())),
    }
}

fn is_out_of_space(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
}

/// Overwrites an existing file's bytes without truncating it first (which
/// would give its blocks away), then trims it.
fn rewrite_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = options.open(path)?;
    file.rewind()?;
    file.write_all(bytes)?;
    file.set_len(bytes.len() as u64)?;
    file.sync_all()
}

/// Puts `bytes` at `path` so that a crash leaves the old file or the new
/// one, never a torn one: they are written to a temporary file beside it
/// (0600), synced, renamed over `path`, and the directory is synced. A
/// symbolic link at `path` is refused (the image's O_NOFOLLOW rule).
fn replace_file(path: &Path, bytes: &[u8], overwrite: bool) -> std::io::Result<()> {
    use std::io::Write;
    if overwrite && is_symlink(path) {
        return Err(std::io::Error::other(
            "it is a symbolic link: pmem does not write through links",
        ));
    }
    if !overwrite {
        // Claims the name (O_EXCL, O_NOFOLLOW): refuses an existing file
        // or link.
        pmem_core::sink::create_image_file(path, false)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = pmem_core::sink::create_image_file(&temp, false).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        sync_parent(path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Syncs the directory holding `path`, so a file created or renamed there
/// survives a crash.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_json_is_inclusive_hex() {
        let r = Range::new(0x1000, 0x9f000).unwrap();
        let j = RangeJson::from(&r);
        assert_eq!(j.start, "0x1000");
        assert_eq!(j.last, "0x9efff");
        assert_eq!(j.bytes, 0x9e000);
        assert_eq!(j.to_range().unwrap(), r);
        let bad = RangeJson {
            bytes: 1,
            ..j.clone()
        };
        assert!(bad.to_range().is_err());
        let bad = RangeJson {
            start: "1000".into(),
            ..j
        };
        assert!(bad.to_range().is_err());
    }

    #[test]
    fn windows_json_round_trips() {
        let w = WindowsMetadata {
            cr3: 0x1aa000,
            nt_build_number: 0xF000_4A61,
            kernel_base: 0xffff_f800_1200_0000,
            kdbg: 0,
            pfn_database: 1,
            ps_loaded_module_list: 2,
            ps_active_process_head: 3,
            processors: 8,
            system_time: 133_485_408_000_000_000,
        };
        let j = WindowsJson::from(&w);
        assert_eq!(j.cr3, "0x1aa000");
        assert_eq!(j.build, 19041);
        let text = serde_json::to_string(&j).unwrap();
        let back: WindowsJson = serde_json::from_str(&text).unwrap();
        assert_eq!(back.to_metadata().unwrap(), w);
    }
}
