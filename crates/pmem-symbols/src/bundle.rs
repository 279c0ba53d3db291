//! The symbol bundle: what an acquisition captures of a Linux kernel's own
//! description (BTF, kallsyms, banner, VMCOREINFO, modules, config), as one
//! POSIX tar archive, so that an analyst can also open it with `tar`.
//!
//! ```text
//! capture.json        what was captured and how (CaptureRecord), first
//! btf/vmlinux         /sys/kernel/btf/vmlinux
//! btf/modules/NAME    /sys/kernel/btf/NAME of each loaded module
//! kallsyms            /proc/kallsyms as read (real addresses as root,
//!                     unless kptr_restrict=2 hides them: see capture.json)
//! version             /proc/version (the banner vol3 matches images by)
//! vmcoreinfo          the VMCOREINFO note's text (KERNELOFFSET: KASLR)
//! modules             /proc/modules
//! config | config.gz  /boot/config-RELEASE or /proc/config.gz
//! ```
//!
//! Images whose format has room carry the bundle inside (ELF note, Mach-O
//! LC_NOTE, AFF4 member); the others get it beside them as `IMAGE.symbols`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;

/// The member that describes the capture.
pub const CAPTURE_RECORD: &str = "capture.json";
/// The kernel's BTF.
pub const BTF: &str = "btf/vmlinux";
/// Where module BTF members go (`btf/modules/NAME`).
pub const MODULE_BTF_DIR: &str = "btf/modules/";
/// /proc/kallsyms as read.
pub const KALLSYMS: &str = "kallsyms";
/// /proc/version.
pub const VERSION: &str = "version";
/// The VMCOREINFO note's descriptor.
pub const VMCOREINFO: &str = "vmcoreinfo";
/// /proc/modules.
pub const MODULES: &str = "modules";
/// /boot/config-RELEASE.
pub const CONFIG: &str = "config";
/// /proc/config.gz (kept compressed).
pub const CONFIG_GZ: &str = "config.gz";

/// `capture.json`: what the capture found, and what it could not read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptureRecord {
    /// `pmem-symbols-bundle`: what this archive is.
    pub kind: String,
    /// The layout's version (1).
    pub version: u32,
    /// `uname -r` of the captured kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    /// Whether kallsyms shows the symbols' addresses.
    pub kallsyms_addresses: KallsymsAddresses,
    /// The value of kernel.kptr_restrict when kallsyms was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kptr_restrict: Option<u32>,
    /// Each member captured, in archive order (capture.json aside).
    pub files: Vec<CapturedFile>,
    /// What was looked for and not captured, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<MissingFile>,
    /// Seconds the capture took.
    pub seconds: f64,
}

/// The kind of [`CaptureRecord`].
pub const BUNDLE_KIND: &str = "pmem-symbols-bundle";
/// The layout version of [`CaptureRecord`].
pub const BUNDLE_VERSION: u32 = 1;

/// Whether kallsyms carries addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KallsymsAddresses {
    /// The addresses as the kernel uses them (read as root, kptr_restrict < 2).
    Real,
    /// Every address reads as zero: kptr_restrict (or no root) hid them.
    Hidden,
    /// kallsyms was not captured.
    #[default]
    Absent,
}

/// One captured member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedFile {
    /// The member's name in the archive.
    pub name: String,
    /// Where it was read from on the machine.
    pub source: String,
    /// Its size.
    pub bytes: u64,
}

/// One thing the capture looked for and did not get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissingFile {
    /// The member it would have been.
    pub name: String,
    /// Where it was looked for.
    pub source: String,
    /// Why it is missing (the OS error, or "not present").
    pub reason: String,
}

/// A symbol bundle being built or read: [`CaptureRecord`] and the members.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bundle {
    /// What capture.json says.
    pub record: CaptureRecord,
    /// Members by name (capture.json excluded).
    pub members: BTreeMap<String, Vec<u8>>,
}

/// A symbol bundle that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The tar archive is damaged.
    #[error("{what}: not a readable symbol bundle (tar) at byte offset {offset}: {source}")]
    Tar {
        /// The bundle's name (its file, or the image holding it).
        what: String,
        /// Where in the bundle the damaged part starts.
        offset: u64,
        /// The cause.
        source: std::io::Error,
    },
    /// capture.json is missing or not the record pmem writes.
    #[error("{what}: capture.json: {reason}")]
    Record {
        /// The bundle's name.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

impl Bundle {
    /// The member `name`, if captured.
    pub fn member(&self, name: &str) -> Option<&[u8]> {
        self.members.get(name).map(Vec::as_slice)
    }

    /// The archive: capture.json first (so `tar tf` shows what it is),
    /// then the members by name; owner-only modes. Consumes the bundle and
    /// frees each member once it is in the archive: an acquisition's peak
    /// memory is then about one bundle (plus a member), not two, before
    /// its copy starts.
    pub fn into_tar(self) -> Vec<u8> {
        let record = serde_json::to_vec_pretty(&self.record).expect("a record serialises");
        let size = 512 * (self.members.len() + 3)
            + self.members.values().map(|m| m.len() + 511).sum::<usize>()
            + record.len();
        let mut builder = tar::Builder::new(Vec::with_capacity(size));
        let mut append = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o600);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, name, data)
                .expect("appending to a Vec cannot fail for names pmem makes");
        };
        append(CAPTURE_RECORD, &record);
        for (name, data) in self.members {
            append(&name, &data);
        }
        builder
            .into_inner()
            .expect("finishing a tar in a Vec cannot fail")
    }

    /// Reads an archive `into_tar` wrote; `what` names it in errors.
    pub fn from_tar(bytes: &[u8], what: &str) -> Result<Bundle, BundleError> {
        let tar_error = |offset: u64, source| BundleError::Tar {
            what: what.to_string(),
            offset,
            source,
        };
        let mut archive = tar::Archive::new(bytes);
        let mut record = None;
        let mut members = BTreeMap::new();
        // Where the next header starts: the tar crate's errors for a bad
        // header do not say.
        let mut next_header = 0;
        for entry in archive.entries().map_err(|e| tar_error(0, e))? {
            let mut entry = entry.map_err(|e| tar_error(next_header, e))?;
            let offset = entry.raw_header_position();
            next_header = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = entry
                .path()
                .map_err(|e| tar_error(offset, e))?
                .to_string_lossy()
                .into_owned();
            // Sizes are bounded by `bytes`: the reader cannot be told to
            // allocate more than the archive holds.
            let mut data = Vec::with_capacity((entry.size() as usize).min(bytes.len()));
            entry
                .read_to_end(&mut data)
                .map_err(|e| tar_error(offset, e))?;
            if name == CAPTURE_RECORD {
                record = Some(serde_json::from_slice::<CaptureRecord>(&data).map_err(|e| {
                    BundleError::Record {
                        what: what.to_string(),
                        reason: e.to_string(),
                    }
                })?);
            } else {
                members.insert(name, data);
            }
        }
        let record = record.ok_or_else(|| BundleError::Record {
            what: what.to_string(),
            reason: "missing: not a pmem symbol bundle".into(),
        })?;
        if record.kind != BUNDLE_KIND {
            return Err(BundleError::Record {
                what: what.to_string(),
                reason: format!("kind {:?}, not {BUNDLE_KIND:?}", record.kind),
            });
        }
        Ok(Bundle { record, members })
    }

    /// The KASLR offset VMCOREINFO states (`KERNELOFFSET=hex`), if any.
    pub fn kernel_offset(&self) -> Option<u64> {
        kernel_offset(self.member(VMCOREINFO)?)
    }
}

/// `KERNELOFFSET=` of a VMCOREINFO note's text (hex, no prefix).
pub fn kernel_offset(vmcoreinfo: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(vmcoreinfo).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("KERNELOFFSET="))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        let mut members = BTreeMap::new();
        members.insert(BTF.to_string(), vec![0x9f, 0xeb, 1, 0]);
        members.insert(KALLSYMS.to_string(), b"ffffffff81000000 T _text\n".to_vec());
        members.insert(
            VMCOREINFO.to_string(),
            b"OSRELEASE=6.1.0\nKERNELOFFSET=1c000000\n".to_vec(),
        );
        Bundle {
            record: CaptureRecord {
                kind: BUNDLE_KIND.into(),
                version: BUNDLE_VERSION,
                kernel_release: Some("6.1.0".into()),
                kallsyms_addresses: KallsymsAddresses::Real,
                kptr_restrict: Some(0),
                files: vec![CapturedFile {
                    name: KALLSYMS.into(),
                    source: "/proc/kallsyms".into(),
                    bytes: 25,
                }],
                missing: vec![MissingFile {
                    name: CONFIG.into(),
                    source: "/boot/config-6.1.0".into(),
                    reason: "not present".into(),
                }],
                seconds: 0.25,
            },
            members,
        }
    }

    #[test]
    fn a_bundle_reads_back_as_written() {
        let bundle = sample();
        let tar = bundle.clone().into_tar();
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(&tar[..CAPTURE_RECORD.len()], CAPTURE_RECORD.as_bytes());
        let read = Bundle::from_tar(&tar, "t").unwrap();
        assert_eq!(read, bundle);
        assert_eq!(read.kernel_offset(), Some(0x1c00_0000));
    }

    #[test]
    fn damage_and_foreign_archives_are_named() {
        let mut tar = sample().into_tar();
        // The first header's checksum no longer matches.
        tar[100] ^= 0x55;
        let err = Bundle::from_tar(&tar, "img.symbols").unwrap_err();
        assert!(
            err.to_string().starts_with("img.symbols: not a readable"),
            "{err}"
        );

        let mut other = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(2);
        other.append_data(&mut header, "a.txt", &b"hi"[..]).unwrap();
        let err = Bundle::from_tar(&other.into_inner().unwrap(), "x.tar").unwrap_err();
        assert!(
            err.to_string().contains("not a pmem symbol bundle"),
            "{err}"
        );
    }

    #[test]
    fn a_truncated_member_is_an_error_not_a_short_read() {
        let tar = sample().into_tar();
        // Cut inside the last member's data.
        let cut = &tar[..tar.len() - 1024 - 256];
        assert!(Bundle::from_tar(cut, "t").is_err());
    }

    #[test]
    fn kernel_offset_reads_vmcoreinfo_hex() {
        assert_eq!(kernel_offset(b"KERNELOFFSET=0\n"), Some(0));
        assert_eq!(
            kernel_offset(b"A=1\nKERNELOFFSET=2a000000"),
            Some(0x2a00_0000)
        );
        assert_eq!(kernel_offset(b"A=1\n"), None);
    }
}
