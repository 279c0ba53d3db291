//! `--compress` and `--max-disk-usage`, shared by `acquire` and `convert`.

use anyhow::{bail, Result};
use pmem_core::sink::DiskLimit;
use pmem_core::{ByteSink, ImageWriter};
use pmem_formats::{aff4, Format};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// Uncompressed image.
    None,
    /// AVML v2 compressed LiME (with --format lime): snappy-framed blocks
    /// that avml-convert and Volatility 3's AVML layer read.
    Snappy,
    /// The whole image as a standard zstd stream (`zstd -d` restores it).
    Zstd,
    /// LZ4 chunks (with --format aff4).
    Lz4,
    /// Deflate (zlib) chunks (with --format aff4).
    Deflate,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CompressArgs {
    /// Compression: none, snappy (AVML compressed LiME, with --format lime)
    /// or zstd (the whole image as a .zst stream). AFF4 compresses its
    /// chunks itself: snappy (its default), lz4, deflate or none.
    #[arg(long, value_enum)]
    pub compress: Option<Compression>,
    /// Stop writing (keeping what was written, the manifest says
    /// incomplete) when the image would take more than MiB, or when the
    /// output's filesystem would be more than N% full: "4096" or "90%".
    /// Checked before writing and every 16 MiB while writing.
    #[arg(long, value_name = "MiB|N%", value_parser = parse_disk_limit)]
    pub max_disk_usage: Option<DiskLimit>,
    /// Do not hash while writing (the manifest then records no image_sha256,
    /// and `convert` no memory_sha256): for when every second of smear
    /// counts more than a hash made at acquisition time (hash the file
    /// afterwards; `pmem verify` computes both).
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
    /// AFF4's chunk compression.
    pub chunks: aff4::Compression,
}

impl Encoding {
    /// A format written as it is, without compression around it.
    pub fn plain(format: Format) -> Encoding {
        Encoding {
            format,
            zstd: false,
            chunks: aff4::Compression::default(),
        }
    }

    /// The manifest's `compression` field.
    pub fn compression(&self) -> Option<String> {
        match (self.format, self.zstd) {
            (_, true) => Some("zstd".into()),
            (Format::Avml, false) => Some("snappy".into()),
            (Format::Aff4, false) => Some(
                match self.chunks {
                    aff4::Compression::Snappy => "snappy",
                    aff4::Compression::Lz4 => "lz4",
                    aff4::Compression::Deflate => "deflate",
                    aff4::Compression::Stored => "none",
                }
                .into(),
            ),
            _ => None,
        }
    }

    /// The format's writer over `sink` (wrapped in zstd if asked).
    pub fn writer(&self, mut sink: Box<dyn ByteSink>) -> Box<dyn ImageWriter> {
        if self.zstd {
            sink = Box::new(pmem_formats::zstd::ZstdSink::new(sink));
        }
        match self.format {
            Format::Aff4 => Box::new(aff4::Aff4Writer::with_compression(sink, self.chunks)),
            format => pmem_formats::writer(format, sink),
        }
    }
}

/// Maps `--format` and `--compress` to what is written.
pub fn resolve(format: Format, compression: Option<Compression>) -> Result<Encoding> {
    if format == Format::Aff4 {
        let chunks = match compression {
            None | Some(Compression::Snappy) => aff4::Compression::Snappy,
            Some(Compression::Lz4) => aff4::Compression::Lz4,
            Some(Compression::Deflate) => aff4::Compression::Deflate,
            Some(Compression::None) => aff4::Compression::Stored,
            Some(Compression::Zstd) => {
                bail!("AFF4 compresses its chunks itself: --compress snappy, lz4, deflate or none")
            }
        };
        return Ok(Encoding {
            chunks,
            ..Encoding::plain(format)
        });
    }
    let compression = compression.unwrap_or(Compression::None);
    Ok(match (format, compression) {
        (_, Compression::Lz4 | Compression::Deflate) => {
            bail!("--compress lz4 and deflate are AFF4 chunk compressions: use them with --format aff4")
        }
        (Format::Avml, Compression::None | Compression::Snappy)
        | (Format::Lime, Compression::Snappy) => Encoding::plain(Format::Avml),
        (_, Compression::Snappy) => {
            bail!("--compress snappy is AVML's compressed LiME: use it with --format lime (or --compress zstd)")
        }
        (Format::Avml, Compression::Zstd) => bail!("AVML images are already compressed"),
        (format, Compression::Zstd) => Encoding {
            zstd: true,
            ..Encoding::plain(format)
        },
        (format, Compression::None) => Encoding::plain(format),
    })
}
