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
    /// Memory that could not be read and was written as zeros: marked in
    /// the image (AFF4 aff4:UnreadableData) or listed in its manifest.
    unreadable: Vec<RangeJson>,
    /// Where `unreadable` comes from: "image" or "manifest".
    unreadable_from: String,
    /// Why the manifest's ranges are not taken (an AVML image whose blocks
    /// do not prove them).
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest_mismatch: Option<String>,
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
    // Only AFF4 marks unreadable memory itself; for the other formats the
    // manifest lists the pages that were written as zeros.
    let (unreadable, unreadable_from) = match (reader.unreadable(), &opened.manifest) {
        (marked, _) if !marked.is_empty() => {
            (marked.iter().map(RangeJson::from).collect(), "image")
        }
        (_, Some(m)) => (unreadable_from_manifest(m), "manifest"),
        _ => (Vec::new(), "image"),
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
        unreadable,
        unreadable_from: unreadable_from.to_string(),
        manifest_mismatch: opened.ranges_unproven.clone(),
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
            "unreadable:   {} range(s), written as zeros (from the {})",
            info.unreadable.len(),
            info.unreadable_from
        );
        for r in &info.unreadable {
            println!("  {:>18} - {:<18} {:>14} bytes", r.start, r.last, r.bytes);
        }
    }
    if let Some(reason) = &info.manifest_mismatch {
        println!("warning:      the manifest's ranges are not taken: {reason}");
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

/// The manifest's unreadable page runs as ranges (runs that do not fit in
/// the address space are left out: `pmem verify` reports them).
fn unreadable_from_manifest(manifest: &manifest::Manifest) -> Vec<RangeJson> {
    manifest
        .unreadable_pages
        .iter()
        .filter_map(|run| {
            let start = manifest::parse_hex(&run.start).ok()?;
            let len = run.pages.checked_mul(pmem_core::PAGE_SIZE)?;
            pmem_core::Range::new(start, start.checked_add(len)?)
        })
        .map(|r| RangeJson::from(&r))
        .collect()
}
