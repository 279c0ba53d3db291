//! The output options `acquire` and `convert` share.

use crate::compress::Compression;
use crate::destination::{SinkOptions, UploadArgs};
use pmem_core::sink::DiskLimit;
use pmem_core::HashAlgorithm;
use std::path::PathBuf;

/// The output options `acquire` and `convert` share: the manifest, how
/// the image is written, and where it goes besides a file.
#[derive(clap::Args, Debug, Clone)]
pub struct OutputArgs {
    /// Where to write the JSON manifest (default: OUTPUT.json; none for
    /// standard output unless given).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Where to write the kernel's symbol bundle when the image format has
    /// no room for it (lime, raw, avml; default: OUTPUT.symbols beside an
    /// image file, none for standard output unless given).
    #[arg(long, value_name = "FILE")]
    pub symbols_file: Option<PathBuf>,
    /// Overwrite an existing image and manifest.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
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
    /// The hash of the image (and of the memory, and of the ciphertext, and
    /// of a tls:// stream's objects): blake3 (fast), sha256, or none (the
    /// manifest then records no image_hash, and `convert` no memory_hash:
    /// for when every second of smear counts more than a hash made at
    /// acquisition time; hash the file afterwards, `pmem verify` computes
    /// both).
    #[arg(long, value_enum, value_name = "ALGORITHM", default_value = "blake3")]
    pub hash: HashChoice,
    /// The same as --hash none.
    #[arg(long, conflicts_with = "hash")]
    pub no_hash: bool,
    #[command(flatten)]
    pub upload: UploadArgs,
}

/// `--hash`: an algorithm, or none.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashChoice {
    Blake3,
    Sha256,
    None,
}

impl OutputArgs {
    /// The algorithm of every hash the job makes; `None` for --hash none
    /// (or --no-hash).
    pub fn hash(&self) -> Option<HashAlgorithm> {
        match (self.no_hash, self.hash) {
            (true, _) | (false, HashChoice::None) => None,
            (false, HashChoice::Blake3) => Some(HashAlgorithm::Blake3),
            (false, HashChoice::Sha256) => Some(HashAlgorithm::Sha256),
        }
    }

    /// How the job's file or stream sink is made.
    pub fn sink_options(&self) -> SinkOptions {
        SinkOptions {
            overwrite: self.force,
            hash: self.hash(),
            max_disk_usage: self.max_disk_usage,
        }
    }
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
