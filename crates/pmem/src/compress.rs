//! `--compress` and `--max-disk-usage`, shared by `acquire` and `convert`.

use anyhow::{bail, Result};
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
