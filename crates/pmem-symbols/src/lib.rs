//! A Volatility 3 symbol table (ISF) for a Linux kernel, built from what
//! the kernel itself exports: its BTF type information and kallsyms. No
//! debug package and no dwarf2json are needed.
//!
//! # Data flow
//!
//! ```text
//! /sys/kernel/btf/vmlinux --btf::Btf::parse--------------+
//! /proc/kallsyms ---------kallsyms::parse----------------+--isf::build--> Isf --write_isf--> DIR/linux/NAME.json.xz
//! /proc/version (banner) --------------------------------+
//! KASLR offset (VMCOREINFO KERNELOFFSET, or derived) ----+
//! ```
//!
//! - [`btf`] parses the raw BTF blob: every kind up to ENUM64.
//! - [`kallsyms`] parses `/proc/kallsyms`, reports hidden addresses
//!   (`kptr_restrict`) as their own error, and turns run-time addresses
//!   into link-time ones.
//! - [`isf`] converts: BTF INTs and FLOATs become `base_types` (with
//!   `void` and `pointer`), structs and unions `user_types` (bitfields as
//!   `{"kind": "bitfield", ...}`, anonymous members flagged so vol3 lifts
//!   their fields), enums `enums`; kallsyms becomes `symbols`, typed from
//!   BTF VARs and from [`globals::KNOWN_GLOBALS`]; `linux_banner` carries
//!   the banner as `constant_data`, by which vol3 matches the ISF to an
//!   image.
//! - [`write_isf`] writes xz-compressed JSON, mode 0600.
//!
//! # KASLR
//!
//! kallsyms shows addresses after the KASLR shift. vol3 wants the
//! link-time addresses (as in vmlinux and System.map): it finds the
//! banner and `init_task` in the image and computes the shift itself. The
//! caller therefore gives the offset explicitly ([`isf::Inputs::kaslr_offset`]):
//! VMCOREINFO's `KERNELOFFSET` where it is known, otherwise
//! [`kallsyms::derive_x86_64_kaslr_offset`] (`_text` minus x86-64's default
//! 0xffffffff81000000). Only kernel-half addresses are shifted: the small
//! per-CPU offsets (`A` symbols) are not relocated by KASLR.
//!
//! # Choices
//!
//! - BTF parser: written here, not `btf-rs` (crates.io, retis-org). btf-rs
//!   is well kept and parses the kernel's blob with every kind (members
//!   with bitfield sizes, ENUM64, tags), so it fits technically; it is
//!   licensed LGPL-2.1-or-later, and linking it statically into pmem's
//!   Apache-2.0 single-file binaries would put LGPL relinking obligations
//!   on every release. Its errors also do not say where in the blob the
//!   input went wrong. The format is small and fixed (a 24-byte header and
//!   19 record layouts), so a bounds-checked parser whose errors name the
//!   byte offset is about 750 lines with its docs, fuzzed by a proptest.
//! - xz: `lzma-rust2` (pure Rust, Apache-2.0, LZMA2 encoder with the xz
//!   presets) writes the standard .xz container that Python's `lzma` (and
//!   so vol3) reads. The C `liblzma` crate was tried first: it cannot build
//!   for the targets pmem ships without their C library headers (the
//!   static arm64 musl binary, the macOS type-check), and `lzma-rs` only
//!   has a literal-only encoder, whose output would be larger than the
//!   JSON.
//! - Anonymous structs, unions and enums are named `unnamed_` and 16 hex
//!   digits of a hash of their definition, member fields without a name
//!   `unnamed_field_N`, as dwarf2json does, so vol3 treats them the same.

#![warn(missing_docs)]

pub mod btf;
pub mod bundle;
pub mod capture;
pub mod globals;
pub mod isf;
pub mod kallsyms;

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// xz preset: 6 is xz's own default, a few seconds for a kernel's ISF.
const XZ_PRESET: u32 = 6;

/// Writing the ISF failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    /// The file or directory being written.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Writes `isf` as `DIR/linux/NAME.json.xz`, readable by its owner only
/// (kallsyms addresses defeat KASLR of the machine they came from), via a
/// temporary file renamed into place so that a reader never sees half a
/// file. Returns the path written.
pub fn write_isf(isf: &isf::Isf, dir: &Path, name: &str) -> Result<PathBuf, WriteError> {
    let linux_dir = dir.join("linux");
    fs::create_dir_all(&linux_dir).map_err(|source| WriteError {
        path: linux_dir.clone(),
        source,
    })?;
    let path = linux_dir.join(format!("{name}.json.xz"));
    let temporary = linux_dir.join(format!(".{name}.json.xz.partial"));
    let failed = |source| WriteError {
        path: path.clone(),
        source,
    };
    let _ = fs::remove_file(&temporary);
    let file = owner_only_file(&temporary).map_err(failed)?;
    let options = lzma_rust2::XzOptions::with_preset(XZ_PRESET);
    let written = lzma_rust2::XzWriter::new(file, options)
        .and_then(|encoder| {
            let mut writer = BufWriter::with_capacity(1 << 20, encoder);
            serde_json::to_writer(&mut writer, isf).map_err(std::io::Error::from)?;
            writer.flush()?;
            let encoder = writer.into_inner().map_err(|e| e.into_error())?;
            encoder.finish()?.sync_all()
        })
        .and_then(|()| fs::rename(&temporary, &path));
    if let Err(source) = written {
        let _ = fs::remove_file(&temporary);
        return Err(failed(source));
    }
    Ok(path)
}

#[cfg(unix)]
fn owner_only_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn owner_only_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// A file name for the ISF from the banner's kernel release
/// (`6.1.0-28-amd64`), characters outside `[A-Za-z0-9._+-]` replaced; or,
/// without a banner, `btf-` and the first 12 hex digits of the BTF's
/// SHA-256.
pub fn isf_name(banner: Option<&[u8]>, btf_sha256_hex: &str) -> String {
    match banner.and_then(isf::banner_release) {
        Some(release) => release
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
        None => format!("btf-{}", &btf_sha256_hex[..btf_sha256_hex.len().min(12)]),
    }
}
