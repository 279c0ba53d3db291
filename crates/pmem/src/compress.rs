//! What `--format` and `--compress` make of the image ([`Encoding`]).

use anyhow::{bail, Result};
use pmem_core::{ByteSink, ImageWriter};
use pmem_formats::{aff4, Format};
use std::sync::OnceLock;

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

/// `--format`: pmem_formats' formats for clap, named from [`Format::ALL`]
/// and [`Format::name`] (so help, parser and formats never drift apart)
/// and described once, here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatArg(pub Format);

impl clap::ValueEnum for FormatArg {
    fn value_variants<'a>() -> &'a [Self] {
        static VARIANTS: OnceLock<Vec<FormatArg>> = OnceLock::new();
        VARIANTS.get_or_init(|| Format::ALL.into_iter().map(FormatArg).collect())
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self.0 {
            Format::Lime => "LiME",
            Format::Raw => "zero-padded, sparse on files",
            Format::Elf => "ELF core",
            Format::Dmp => "Windows crash dump",
            Format::Avml => "compressed LiME",
            Format::Macho => "Mach-O core",
            Format::Aff4 => "AFF4 volume",
            // A format pmem-formats adds is listed by name until described.
            _ => "",
        };
        Some(clap::builder::PossibleValue::new(self.0.name()).help(help))
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
