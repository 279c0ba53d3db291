//! `pmem info`: what an image holds.

use crate::image;
use crate::manifest::{self, RangeJson};
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Manifest to use for a raw image's ranges (default: IMAGE.json if present).
    #[arg(long)]
    manifest: Option<PathBuf>,
    #[command(flatten)]
    identity: image::IdentityArgs,
    /// The image file.
    image: PathBuf,
}

#[derive(Serialize)]
struct InfoJson {
    path: String,
    format: String,
    arch: Option<String>,
    /// Where `arch` comes from: "image" (ELF e_machine, Mach-O cputype,
    /// crash dump header) or "manifest" (its host.arch: LiME, raw, AVML).
    arch_from: Option<String>,
    ranges: Vec<RangeJson>,
    total_bytes: u64,
    image_bytes: u64,
    /// pmem metadata embedded in the image (ELF pmem note), if any.
    metadata: Option<serde_json::Value>,
    vmcoreinfo_bytes: Option<usize>,
    direct_map_offset: Option<String>,
    /// Where the ranges of a raw image came from.
    ranges_from: String,
    /// Memory the image itself marks as not read (AFF4 aff4:UnreadableData).
    unreadable: Vec<RangeJson>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    image::set_identity(&args.identity)?;
    let opened = image::open(&args.image, args.manifest.as_deref())?;
    let reader = &opened.reader;
    let map = reader.memory_map();
    let metadata = reader
        .metadata_json()
        .map(|text| serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.into())));
    let ranges_from = match (reader.format(), &opened.manifest) {
        (pmem_formats::Format::Raw, Some(_)) => "manifest",
        (pmem_formats::Format::Raw, None) => "file length (no manifest)",
        _ => "image",
    };
    // Formats without a machine field (LiME, raw, AVML) get it from the
    // manifest, which names the acquired machine's architecture.
    let (arch, arch_from) = match (reader.arch(), &opened.manifest) {
        (Some(arch), _) => (Some(arch.name()), Some("image")),
        (None, Some(m)) if !m.origin.host.arch.is_empty() => {
            (Some(m.origin.host.arch.clone()), Some("manifest"))
        }
        _ => (None, None),
    };
    let info = InfoJson {
        path: args.image.display().to_string(),
        format: reader.format().name().to_string(),
        arch,
        arch_from: arch_from.map(str::to_string),
        ranges: manifest::ranges_json(map),
        total_bytes: map.total_bytes(),
        image_bytes: image::image_len(&args.image)?,
        metadata,
        vmcoreinfo_bytes: reader.vmcoreinfo().map(<[u8]>::len),
        direct_map_offset: reader.direct_map_offset().map(|o| format!("{o:#x}")),
        ranges_from: ranges_from.to_string(),
        unreadable: reader.unreadable().iter().map(RangeJson::from).collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("image:        {}", info.path);
    println!("format:       {}", info.format);
    match (&info.arch, &info.arch_from) {
        (Some(arch), Some(from)) if from == "manifest" => {
            println!("architecture: {arch} (from the manifest)")
        }
        (Some(arch), _) => println!("architecture: {arch}"),
        _ => println!("architecture: not recorded"),
    }
    println!("image bytes:  {}", info.image_bytes);
    println!(
        "memory:       {} bytes ({:.1} MiB) in {} range(s), ranges from {}",
        info.total_bytes,
        info.total_bytes as f64 / (1 << 20) as f64,
        info.ranges.len(),
        info.ranges_from
    );
    for r in &info.ranges {
        println!("  {:>18} - {:<18} {:>14} bytes", r.start, r.last, r.bytes);
    }
    if !info.unreadable.is_empty() {
        println!(
            "unreadable:   {} range(s), read as zeros",
            info.unreadable.len()
        );
        for r in &info.unreadable {
            println!("  {:>18} - {:<18} {:>14} bytes", r.start, r.last, r.bytes);
        }
    }
    if let Some(offset) = &info.direct_map_offset {
        println!("direct map:   physical 0 at virtual {offset}");
    }
    if let Some(len) = info.vmcoreinfo_bytes {
        println!("vmcoreinfo:   {len} bytes");
    }
    if let Some(meta) = &info.metadata {
        println!("metadata:     {}", serde_json::to_string(meta)?);
    }
    Ok(ExitCode::SUCCESS)
}
