//! `--compress` and `--max-disk-usage`, shared by `acquire` and `convert`.

use anyhow::{bail, Result};
use pmem_core::sink::DiskLimit;
use pmem_formats::Format;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// Uncompressed image.
    None,
    /// AVML v2 compressed LiME (with --format lime): snappy-framed blocks
    /// that avml-convert and Volatility 3's AVML layer read.
    Snappy,
    /// The whole image as a standard zstd stream (`zstd -d` restores it).
    Zstd,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CompressArgs {
    /// Compression: none, snappy (AVML compressed LiME, with --format lime)
    /// or zstd (the whole image as a .zst stream).
    #[arg(long, value_enum, default_value = "none")]
    pub compress: Compression,
    /// Stop writing (keeping what was written, the manifest says
    /// incomplete) when the image would take more than MiB, or when the
    /// output's filesystem would be more than N% full: "4096" or "90%".
    /// Checked before writing and every 16 MiB while writing.
    #[arg(long, value_name = "MiB|N%", value_parser = parse_disk_limit)]
    pub max_disk_usage: Option<DiskLimit>,
    /// Do not hash the image while writing it (the manifest then records
    /// no image_sha256): for when every second of smear counts more than a
    /// hash made at acquisition time (hash the file afterwards).
    #[arg(long)]
    pub no_hash: bool,
}

/// Parses `--max-disk-usage`.
fn parse_disk_limit(text: &str) -> Result<DiskLimit, String> {
    if let Some(percent) = text.strip_suffix('%') {
        match percent.trim().parse::<u8>() {
            Ok(n) if (1..=100).contains(&n) => Ok(DiskLimit::Percent(n)),
            _ => Err(format!("{text}: a percentage from 1% to 100%")),
        }
    } else {
        match text.trim().parse::<u64>() {
            Ok(mib) if mib > 0 => mib
                .checked_mul(1 << 20)
                .map(DiskLimit::Bytes)
                .ok_or_else(|| format!("{text}: too large")),
            _ => Err(format!(
                "{text}: a size in MiB (e.g. 4096) or a percentage (e.g. 90%)"
            )),
        }
    }
}

/// What a job writes: the format writer and whether a zstd stream wraps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub format: Format,
    pub zstd: bool,
}

impl Encoding {
    /// The manifest's `compression` field.
    pub fn compression(&self) -> Option<String> {
        match (self.format, self.zstd) {
            (_, true) => Some("zstd".into()),
            (Format::Avml, false) => Some("snappy".into()),
            _ => None,
        }
    }
}

/// Maps `--format` and `--compress` to what is written.
pub fn resolve(format: Format, compression: Compression) -> Result<Encoding> {
    Ok(match (format, compression) {
        (Format::Avml, Compression::None | Compression::Snappy)
        | (Format::Lime, Compression::Snappy) => Encoding {
            format: Format::Avml,
            zstd: false,
        },
        (_, Compression::Snappy) => {
            bail!("--compress snappy is AVML's compressed LiME: use it with --format lime (or --compress zstd)")
        }
        (Format::Avml, Compression::Zstd) => bail!("AVML images are already compressed"),
        (format, Compression::Zstd) => Encoding { format, zstd: true },
        (format, Compression::None) => Encoding {
            format,
            zstd: false,
        },
    })
}
