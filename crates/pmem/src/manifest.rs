//! The JSON manifest written next to every image: what was acquired, from
//! where, what could not be read, and the hashes that `pmem verify` checks.

use anyhow::{Context, Result};
use pmem_core::{HashAlgorithm, ImageHash, MemoryMap, PageRun, Range, WindowsMetadata};
use pmem_sources::macos::PmemInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    pub macos: Option<MacosJson>,
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

/// `/dev/pmem_info` as the manifest writes it: addresses in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacosJson {
    pub pmem_api_version: u64,
    pub cr3: String,
    /// Directory table base: CR3 without its flag bits.
    pub dtb: String,
    pub kaslr_slide: String,
    pub kernel_version: String,
    pub kernel_poffset: String,
    pub phys_mem_size: u64,
    pub pci_config_space_base: String,
    pub efi_mmap: EfiMmapJson,
    /// Every record of the info device, with whether pmem read it.
    pub records: Vec<RecordJson>,
    /// `meta` keys of other kext versions, as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other: BTreeMap<String, String>,
}

/// Where the boot loader's EFI memory map lies and its descriptor shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EfiMmapJson {
    pub poffset: String,
    pub size: u64,
    pub desc_size: u64,
    pub desc_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordJson {
    pub purpose: String,
    /// efi_range or pci_range.
    #[serde(rename = "type")]
    pub kind: String,
    /// The EFI or PCI type name.
    pub subtype: String,
    pub start: String,
    pub length: String,
    pub hw_informant: bool,
    /// Whether its pages were read (readable EFI types only).
    pub acquired: bool,
}

impl From<&PmemInfo> for MacosJson {
    fn from(info: &PmemInfo) -> Self {
        MacosJson {
            pmem_api_version: info.api_version,
            cr3: format!("{:#x}", info.cr3),
            dtb: format!("{:#x}", info.dtb),
            kaslr_slide: format!("{:#x}", info.kaslr_slide),
            kernel_version: info.kernel_version.clone(),
            kernel_poffset: format!("{:#x}", info.kernel_poffset),
            phys_mem_size: info.phys_mem_size,
            pci_config_space_base: format!("{:#x}", info.pci_config_space_base),
            efi_mmap: EfiMmapJson {
                poffset: format!("{:#x}", info.mmap_poffset),
                size: info.mmap_size,
                desc_size: info.mmap_desc_size,
                desc_version: info.mmap_desc_version,
            },
            records: info
                .records
                .iter()
                .map(|r| RecordJson {
                    purpose: r.purpose.clone(),
                    kind: r.kind.clone(),
                    subtype: r.subtype.clone(),
                    start: format!("{:#x}", r.start),
                    length: format!("{:#x}", r.length),
                    hw_informant: r.hw_informant,
                    acquired: r.readable(),
                })
                .collect(),
            other: info.other.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The field set this manifest was written with ([`SCHEMA_VERSION`]);
    /// manifests from before the field existed read as version 1. Fields
    /// are only ever added, never given a new meaning, so a reader of
    /// version N reads any later version too (it ignores what it does not
    /// know). Version 2 added the hashes with their algorithm
    /// (`image_hash`...); the SHA-256 fields of version 1 are written
    /// only when the algorithm is SHA-256. docs/manifest.md is the field
    /// reference.
    #[serde(default = "first_schema_version")]
    pub schema_version: u32,
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
    /// The image's hash and its algorithm (schema 2); null with --hash none.
    #[serde(default)]
    pub image_hash: Option<HashJson>,
    /// SHA-256 of the image: beside `image_hash` when that is SHA-256 (for
    /// readers of schema 1), the only image hash in a schema-1 manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    /// The memory content's hash (schema 2), as `image_hash`.
    #[serde(default)]
    pub memory_hash: Option<HashJson>,
    /// As `image_sha256`, for the memory hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    pub encryption: Option<EncryptionJson>,
    /// The kernel's symbol bundle captured with the memory (Linux), and
    /// where it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbols: Option<SymbolsJson>,
    /// When each part of memory was read (acquisitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_map: Option<TimeMapJson>,
    /// What `acquire --reread` found: pages changed since they were copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reread: Option<RereadJson>,
}

/// The manifest's time map: pmem_core's [`TimeMap::to_json`], which the
/// ELF and AFF4 images carry as is. Times are milliseconds from the
/// copy's start (monotonic clock); null for memory never read.
///
/// [`TimeMap::to_json`]: pmem_core::TimeMap::to_json
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeMapJson {
    /// `address` or `kernel-first`: the order memory was read in.
    pub order: String,
    /// Start of the first read, end of the last, and the time between.
    pub first_ms: Option<f64>,
    pub last_ms: Option<f64>,
    pub window_ms: Option<f64>,
    /// The kernel image's ranges and when they were read; null when the
    /// memory map does not say where it lies.
    pub kernel: Option<KernelWindowJson>,
    /// The plan's ranges cut every 64 MiB, and when each was read.
    pub regions: Vec<RegionTimeJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelWindowJson {
    pub ranges: Vec<RangeJson>,
    pub first_ms: Option<f64>,
    pub last_ms: Option<f64>,
    pub window_ms: Option<f64>,
    /// Bytes read ahead and held in memory (kernel-first), else 0.
    pub buffered_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionTimeJson {
    pub start: String,
    pub bytes: u64,
    pub first_ms: Option<f64>,
    pub last_ms: Option<f64>,
}

impl TimeMapJson {
    /// The time map as the manifest records it.
    pub fn of(time_map: &pmem_core::TimeMap) -> Result<TimeMapJson> {
        serde_json::from_str(&time_map.to_json()).context("the time map's JSON")
    }

    /// An image's time map: the one the image carries (ELF, AFF4), else its
    /// manifest's, with where it came from ("image" or "manifest"). A
    /// carried one that is not a time map's JSON counts as none.
    pub fn of_image(
        carried: Option<&str>,
        manifest: Option<&Manifest>,
    ) -> Option<(TimeMapJson, &'static str)> {
        let from_image = carried.and_then(|text| serde_json::from_str::<TimeMapJson>(text).ok());
        match (from_image, manifest) {
            (Some(t), _) => Some((t, "image")),
            (None, Some(m)) => m.time_map.clone().map(|t| (t, "manifest")),
            (None, None) => None,
        }
    }

    /// The region read over the longest time: (start, bytes, ms).
    pub fn slowest_region(&self) -> Option<(&str, u64, f64)> {
        self.regions
            .iter()
            .filter_map(|r| Some((r.start.as_str(), r.bytes, r.last_ms? - r.first_ms?)))
            .max_by(|a, b| a.2.total_cmp(&b.2))
    }
}

/// The manifest's record of a re-read (`acquire --reread`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RereadJson {
    /// Pages read in both passes and compared (digests of 8 bytes).
    pub pages_compared: u64,
    /// Of those, pages whose content differs from what the image holds.
    pub pages_changed: u64,
    /// Pages not compared: unreadable in the copy or in the re-read.
    pub pages_unreadable: u64,
    /// pages_changed / pages_compared.
    pub ratio: f64,
    /// Runs of changed pages, at most 1024.
    pub changed_pages: Vec<PageRunJson>,
    /// True when more runs changed than `changed_pages` lists.
    pub changed_pages_truncated: bool,
    /// Per region of the time map: pages compared and changed.
    pub regions: Vec<RereadRegionJson>,
    /// When the re-read started, in the time map's milliseconds (from the
    /// copy's start).
    pub started_ms: f64,
    /// How long the re-read took.
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RereadRegionJson {
    pub start: String,
    pub bytes: u64,
    pub pages_compared: u64,
    pub pages_changed: u64,
}

impl RereadJson {
    /// The manifest's record of a re-read that started `started_ms` after
    /// the copy.
    pub fn new(r: &pmem_core::RereadReport, started_ms: f64) -> Self {
        RereadJson {
            pages_compared: r.pages_compared,
            pages_changed: r.pages_changed,
            pages_unreadable: r.pages_unreadable,
            ratio: r.ratio(),
            changed_pages: r.changed.iter().map(PageRunJson::from).collect(),
            changed_pages_truncated: r.changed_truncated,
            regions: r
                .regions
                .iter()
                .map(|(range, compared, changed)| RereadRegionJson {
                    start: format!("{:#x}", range.start),
                    bytes: range.len(),
                    pages_compared: *compared,
                    pages_changed: *changed,
                })
                .collect(),
            started_ms,
            seconds: r.duration_us as f64 / 1e6,
        }
    }
}

/// The manifest's record of the symbol bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SymbolsJson {
    /// "image" (inside it: an ELF note, a Mach-O LC_NOTE, an AFF4
    /// member), "sidecar" (the file or object `file`), or "not_kept"
    /// (standard output without --symbols-file).
    pub carried: String,
    /// The sidecar's name (a path, or the remote object's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Length and SHA-256 of the bundle (the tar, before any encryption).
    pub bytes: u64,
    pub sha256: String,
    /// What the bundle's capture.json says: members, kallsyms addresses,
    /// kptr_restrict, what was missing and why.
    pub capture: pmem_symbols::bundle::CaptureRecord,
}

/// The manifest's record of encryption.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptionJson {
    /// "age" (age-encryption.org/v1, X25519 recipients).
    pub scheme: String,
    pub recipients: Vec<String>,
    /// Length and hash of the ciphertext as stored or sent; the
    /// manifest's image_hash is that of the plaintext image.
    pub ciphertext_bytes: Option<u64>,
    /// Schema 2; `ciphertext_sha256` too when it is SHA-256.
    #[serde(default)]
    pub ciphertext_hash: Option<HashJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciphertext_sha256: Option<String>,
}

impl EncryptionJson {
    /// Records the ciphertext's hash (and its `ciphertext_sha256`).
    pub fn set_ciphertext_hash(&mut self, hash: Option<ImageHash>) {
        (self.ciphertext_hash, self.ciphertext_sha256) = hash_fields(hash);
    }

    /// The ciphertext's hash, from either schema.
    pub fn ciphertext_hash(&self) -> Option<HashJson> {
        either_hash(&self.ciphertext_hash, &self.ciphertext_sha256)
    }
}

/// A hash as schema 2 writes it: the algorithm's name ("blake3" or
/// "sha256") and the hex of the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashJson {
    pub algorithm: String,
    pub hex: String,
}

impl From<ImageHash> for HashJson {
    fn from(hash: ImageHash) -> HashJson {
        HashJson {
            algorithm: hash.algorithm.name().into(),
            hex: hash.hex(),
        }
    }
}

impl HashJson {
    /// The algorithm, if this pmem knows it.
    pub fn algorithm(&self) -> Option<HashAlgorithm> {
        HashAlgorithm::from_name(&self.algorithm)
    }
}

/// The schema-2 field and the SHA-256 field kept for older readers.
fn hash_fields(hash: Option<ImageHash>) -> (Option<HashJson>, Option<String>) {
    let sha256 = hash
        .filter(|h| h.algorithm == HashAlgorithm::Sha256)
        .map(|h| h.hex());
    (hash.map(HashJson::from), sha256)
}

/// The schema-2 field, else a schema-1 manifest's SHA-256.
fn either_hash(hash: &Option<HashJson>, sha256: &Option<String>) -> Option<HashJson> {
    hash.clone().or_else(|| {
        sha256.as_ref().map(|hex| HashJson {
            algorithm: HashAlgorithm::Sha256.name().into(),
            hex: hex.clone(),
        })
    })
}

impl Manifest {
    /// Records the image's and the memory's hashes, in the fields of both
    /// schemas where they are SHA-256.
    pub fn set_hashes(&mut self, image: Option<ImageHash>, memory: Option<ImageHash>) {
        (self.image_hash, self.image_sha256) = hash_fields(image);
        (self.memory_hash, self.memory_sha256) = hash_fields(memory);
    }

    /// The image's hash, from either schema.
    pub fn image_hash(&self) -> Option<HashJson> {
        either_hash(&self.image_hash, &self.image_sha256)
    }

    /// The memory's hash, from either schema.
    pub fn memory_hash(&self) -> Option<HashJson> {
        either_hash(&self.memory_hash, &self.memory_sha256)
    }
}

/// The manifest field set this pmem writes: see docs/manifest.md.
pub const SCHEMA_VERSION: u32 = 2;

fn first_schema_version() -> u32 {
    1
}

/// Where the manifest of `image` lives by default: `IMAGE.json`.
pub fn default_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// The manifest as JSON text, as it is written (before any encryption).
pub fn to_json(manifest: &Manifest) -> Result<Vec<u8>> {
    let mut text = serde_json::to_vec_pretty(manifest)?;
    text.push(b'\n');
    Ok(text)
}

/// What [`write`] does with a file already at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse it (the first write of a run without --force).
    Refuse,
    /// Replace it (--force, or the earlier manifest of this run).
    Replace,
}

/// Writes a manifest's bytes (`text`: [`to_json`], encrypted by the caller
/// when the job encrypts), 0600 like the image (it names the machine and
/// its memory layout), whole: see [`replace_file`].
pub fn write(path: &Path, text: &[u8], existing: Existing) -> Result<()> {
    match replace_file(path, text, existing) {
        // A full disk has no room for a second copy, but the earlier
        // manifest's own blocks can take the new one (about as long): an
        // incomplete image's manifest must say why.
        Err(e) if existing == Existing::Replace && is_out_of_space(&e) => {
            rewrite_in_place(path, text)
                .with_context(|| format!("writing manifest {} (the disk is full)", path.display()))
        }
        written => written.with_context(|| format!("writing manifest {}", path.display())),
    }
}

/// Writes a file that travels beside the image (the symbols sidecar) the
/// way the manifest is written: owner-only, whole or not at all.
pub fn write_beside(path: &Path, bytes: &[u8], existing: Existing, what: &str) -> Result<()> {
    replace_file(path, bytes, existing)
        .with_context(|| format!("writing {what} {}", path.display()))
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
fn replace_file(path: &Path, bytes: &[u8], existing: Existing) -> std::io::Result<()> {
    use std::io::Write;
    if existing == Existing::Replace && is_symlink(path) {
        return Err(std::io::Error::other(
            "it is a symbolic link: pmem does not write through links",
        ));
    }
    if existing == Existing::Refuse {
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

    /// Every key a manifest can hold, as dotted paths (arrays of objects
    /// contribute their elements' keys).
    fn key_paths(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    let path = format!("{prefix}{key}");
                    key_paths(child, &format!("{path}."), out);
                    out.push(path);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    key_paths(item, prefix, out);
                }
            }
            _ => {}
        }
    }

    /// docs/manifest.md's field reference and example stay true to the
    /// schema: its example parses and writes back with the same keys, and
    /// every key of a manifest with every optional part filled is named in
    /// the reference (top-level keys in the table's first column).
    #[test]
    fn the_field_reference_names_every_field() {
        let doc = include_str!("../../../docs/manifest.md");
        let reference = doc
            .split("## Field reference")
            .nth(1)
            .expect("docs/manifest.md has a field reference");
        let example = reference
            .split("```json")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("the field reference has a JSON example");
        let mut value: serde_json::Value = serde_json::from_str(example).unwrap();
        let written =
            serde_json::to_value(serde_json::from_value::<Manifest>(value.clone()).unwrap())
                .unwrap();
        let (mut want, mut got) = (Vec::new(), Vec::new());
        key_paths(&value, "", &mut want);
        key_paths(&written, "", &mut got);
        want.sort();
        got.sort();
        assert_eq!(want, got, "the example has keys the schema does not write");
        assert_eq!(written["schema_version"], SCHEMA_VERSION);

        let record = serde_json::json!({"purpose": "", "type": "", "subtype": "", "start": "0x0",
            "length": "0x0", "hw_informant": false, "acquired": false});
        let optional = serde_json::json!({
            "compression": "zstd",
            "warnings": ["w"],
            "encryption": {"scheme": "age", "recipients": ["age1"], "ciphertext_bytes": 1,
                "ciphertext_hash": {"algorithm": "sha256", "hex": "00"},
                "ciphertext_sha256": "00"},
            "image_sha256": "00",
            "memory_sha256": "00",
            "windows": serde_json::to_value(WindowsJson::from(&WindowsMetadata::default())).unwrap(),
            "symbols": {"carried": "sidecar", "file": "m.lime.symbols", "bytes": 1, "sha256": "00",
                "capture": {"kind": "pmem-symbols-bundle", "version": 1, "kernel_release": "6.1.0",
                    "kallsyms_addresses": "real", "kptr_restrict": 0,
                    "files": [{"name": "kallsyms", "source": "/proc/kallsyms", "bytes": 1}],
                    "missing": [{"name": "config", "source": "/boot/config-6.1.0", "reason": "not present"}],
                    "seconds": 0.1}},
            "time_map": {"order": "kernel-first", "first_ms": 0.1, "last_ms": 9.5, "window_ms": 9.4,
                "kernel": {"ranges": [{"start": "0x0", "last": "0xfff", "bytes": 4096}],
                    "first_ms": 0.1, "last_ms": 0.2, "window_ms": 0.1, "buffered_bytes": 4096},
                "regions": [{"start": "0x0", "bytes": 4096, "first_ms": 0.1, "last_ms": 0.2}]},
            "reread": {"pages_compared": 1, "pages_changed": 1, "pages_unreadable": 0, "ratio": 1.0,
                "changed_pages": [{"start": "0x0", "pages": 1}], "changed_pages_truncated": false,
                "regions": [{"start": "0x0", "bytes": 4096, "pages_compared": 1, "pages_changed": 1}],
                "started_ms": 9.6, "seconds": 0.1},
            "macos": {"pmem_api_version": 2, "cr3": "0x0", "dtb": "0x0", "kaslr_slide": "0x0",
                "kernel_version": "", "kernel_poffset": "0x0", "phys_mem_size": 0,
                "pci_config_space_base": "0x0",
                "efi_mmap": {"poffset": "0x0", "size": 0, "desc_size": 0, "desc_version": 0},
                "records": [record], "other": {"k": "v"}},
        });
        for (key, part) in optional.as_object().unwrap() {
            value[key] = part.clone();
        }
        value["source"]["format"] = "lime".into();
        value["source"]["direct_map_offset"] = "0x0".into();
        value["source"]["module_version"] = "1".into();
        value["source"]["skipped"] = serde_json::json!([{"kind": "kcore", "reason": "r"}]);
        value["not_acquired"] =
            serde_json::json!([{"start": "0x0", "last": "0xfff", "bytes": 4096, "reason": "r"}]);
        value["unreadable_pages"] = serde_json::json!([{"start": "0x0", "pages": 1}]);
        let mut windows =
            serde_json::to_value(WindowsJson::from(&WindowsMetadata::default())).unwrap();
        windows["mode"] = "physical".into();
        value["windows"] = windows;
        let full =
            serde_json::to_value(serde_json::from_value::<Manifest>(value).unwrap()).unwrap();
        let mut paths = Vec::new();
        key_paths(&full, "", &mut paths);
        let first_column: Vec<&str> = reference
            .lines()
            .filter_map(|line| line.strip_prefix("| "))
            .filter_map(|line| line.split(" |").next())
            .collect();
        // `macos.other` is a map of whatever keys other kext versions send.
        for path in paths.into_iter().filter(|p| !p.starts_with("macos.other.")) {
            let top = path.split('.').next().unwrap();
            assert!(
                first_column
                    .iter()
                    .any(|c| c.contains(&format!("`{top}`")) || c.contains(&format!("`{top}."))),
                "docs/manifest.md: {top} is not in the field reference"
            );
            let last = path.rsplit('.').next().unwrap();
            assert!(
                reference.contains(&format!("`{last}`"))
                    || reference.contains(&format!(".{last}`"))
                    || reference.contains(&format!("`{path}.")),
                "docs/manifest.md: {path} is not in the field reference"
            );
        }
    }

    /// A schema-1 manifest's SHA-256 fields read as hashes with their
    /// algorithm; schema 2 writes the SHA-256 fields only for SHA-256.
    #[test]
    fn hashes_read_from_either_schema() {
        let doc = include_str!("../../../docs/manifest.md");
        let example = doc
            .split("## Field reference")
            .nth(1)
            .and_then(|r| r.split("```json").nth(1))
            .and_then(|r| r.split("```").next())
            .unwrap();
        let mut v1: serde_json::Value = serde_json::from_str(example).unwrap();
        let object = v1.as_object_mut().unwrap();
        for key in ["schema_version", "image_hash", "memory_hash"] {
            object.remove(key);
        }
        object.insert("image_sha256".into(), "ab".repeat(32).into());
        let old: Manifest = serde_json::from_value(v1).unwrap();
        assert_eq!(old.schema_version, 1);
        let hash = old.image_hash().unwrap();
        assert_eq!(hash.algorithm(), Some(HashAlgorithm::Sha256));
        assert_eq!(hash.hex, "ab".repeat(32));
        assert_eq!(old.memory_hash(), None);

        let mut new = old.clone();
        let blake3 = HashAlgorithm::Blake3.digest(b"x");
        let sha256 = HashAlgorithm::Sha256.digest(b"x");
        new.set_hashes(Some(blake3), Some(sha256));
        let written = serde_json::to_value(&new).unwrap();
        assert_eq!(written["image_hash"]["algorithm"], "blake3");
        assert_eq!(written["image_hash"]["hex"], blake3.hex());
        assert!(written.get("image_sha256").is_none());
        assert_eq!(written["memory_hash"]["algorithm"], "sha256");
        assert_eq!(written["memory_sha256"], sha256.hex());
        new.set_hashes(None, None);
        let written = serde_json::to_value(&new).unwrap();
        assert!(written["image_hash"].is_null());
        assert!(written.get("image_sha256").is_none());
    }

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

    #[test]
    fn records_everything_the_info_device_says() {
        let text = "meta:\n  pmem_api_version: 2\n  cr3: 4099\n  dtb_off: 4096\n  kaslr_slide: 16\n  kernel_version: \"Darwin\"\n  version_poffset: 7\nrecords:\n  - purpose: \"x\"\n    type: \"efi_range\"\n    efi_type: \"EfiConventionalMemory\"\n    start: 4096\n    length: 4096\n    hw_informant: false\n";
        let json = MacosJson::from(&PmemInfo::parse(text).unwrap());
        assert_eq!((json.cr3.as_str(), json.dtb.as_str()), ("0x1003", "0x1000"));
        assert_eq!(json.kaslr_slide, "0x10");
        assert_eq!(json.other["version_poffset"], "7");
        assert!(json.records[0].acquired);
        let text = serde_json::to_string(&json).unwrap();
        assert_eq!(serde_json::from_str::<MacosJson>(&text).unwrap(), json);
    }
}
