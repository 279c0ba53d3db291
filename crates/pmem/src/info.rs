//! `pmem info`: what an image holds.

use crate::carried_symbols::CarriedSymbols;
use crate::image;
use crate::manifest::{self, RangeJson, RereadJson, TimeMapJson};
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
    /// The kernel symbol bundle the image carries (inside it, or its
    /// IMAGE.symbols sidecar): what `pmem symbols IMAGE` reads.
    symbols: Option<SymbolsInfo>,
    /// The image's and the memory's hashes the manifest records, with
    /// their algorithm (`pmem verify` checks them).
    image_hash: Option<manifest::HashJson>,
    memory_hash: Option<manifest::HashJson>,
    /// When each part of memory was read: from the image (ELF note, AFF4
    /// pmem:timeMap) or its manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    time_map: Option<TimeMapJson>,
    /// "image" or "manifest".
    #[serde(skip_serializing_if = "Option::is_none")]
    time_map_from: Option<String>,
    /// What `acquire --reread` found (from the manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    reread: Option<RereadJson>,
}

#[derive(Serialize)]
struct SymbolsInfo {
    /// Where: "image", or the sidecar's path.
    #[serde(rename = "where")]
    place: String,
    bytes: u64,
    kernel_release: Option<String>,
    /// "real", "hidden" or "absent".
    kallsyms_addresses: String,
    members: Vec<String>,
    /// Why a bundle that is there cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The image's symbol bundle, described; a damaged one is described by
/// its error (`info` still shows the rest).
fn symbols_info(
    path: &std::path::Path,
    embedded: Option<&[u8]>,
    identity: Option<&image::Identity>,
) -> Option<SymbolsInfo> {
    let place = if embedded.is_some() {
        "image".into()
    } else {
        crate::carried_symbols::sidecar_path(path)
            .display()
            .to_string()
    };
    match CarriedSymbols::of_image(path, embedded, identity) {
        Ok(None) => None,
        Ok(Some((symbols, _))) => Some(SymbolsInfo {
            place,
            bytes: symbols.tar.len() as u64,
            kernel_release: symbols.record.kernel_release.clone(),
            kallsyms_addresses: serde_json::to_value(symbols.record.kallsyms_addresses)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            members: symbols
                .record
                .files
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            error: None,
        }),
        Err(err) => Some(SymbolsInfo {
            place,
            bytes: 0,
            kernel_release: None,
            kallsyms_addresses: String::new(),
            members: Vec::new(),
            error: Some(crate::errors::error_text(&err)),
        }),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let identity = args.identity.load()?;
    let opened = image::open(&args.image, args.manifest.as_deref(), identity.as_ref())?;
    let reader = &opened.reader;
    let map = reader.memory_map();
    let recorded = reader.metadata();
    let metadata = recorded
        .metadata_json
        .as_deref()
        .map(|text| serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.into())));
    let ranges_from = match (reader.format(), &opened.manifest) {
        (pmem_formats::Format::Raw, Some(_)) => "manifest",
        (pmem_formats::Format::Raw, None) => "file length (no manifest)",
        _ => "image",
    };
    // Formats without a machine field (LiME, raw, AVML) get it from the
    // manifest, which names the acquired machine's architecture.
    let (arch, arch_from) = match (recorded.arch, &opened.manifest) {
        (Some(arch), _) => (Some(arch.name()), Some("image")),
        (None, Some(m)) if !m.origin.host.arch.is_empty() => {
            (Some(m.origin.host.arch.clone()), Some("manifest"))
        }
        _ => (None, None),
    };
    // Only AFF4 marks unreadable memory itself; for the other formats the
    // manifest lists the pages that were written as zeros.
    let (unreadable, unreadable_from) = match (&recorded.unreadable, &opened.manifest) {
        (marked, _) if !marked.is_empty() => {
            (marked.iter().map(RangeJson::from).collect(), "image")
        }
        (_, Some(m)) => (unreadable_from_manifest(m), "manifest"),
        _ => (Vec::new(), "image"),
    };
    let (time_map, time_map_from) =
        TimeMapJson::of_image(recorded.time_map_json.as_deref(), opened.manifest.as_ref())
            .map_or((None, None), |(t, from)| (Some(t), Some(from.to_string())));
    let info = InfoJson {
        path: args.image.display().to_string(),
        format: reader.format().name().to_string(),
        arch,
        arch_from: arch_from.map(str::to_string),
        ranges: manifest::ranges_json(map),
        total_bytes: map.total_bytes(),
        image_bytes: image::image_len(&args.image, identity.as_ref())?,
        metadata,
        vmcoreinfo_bytes: recorded.vmcoreinfo.as_deref().map(<[u8]>::len),
        direct_map_offset: recorded.direct_map_offset.map(|o| format!("{o:#x}")),
        ranges_from: ranges_from.to_string(),
        unreadable,
        unreadable_from: unreadable_from.to_string(),
        manifest_mismatch: opened.ranges_unproven.clone(),
        symbols: symbols_info(&args.image, recorded.symbols.as_deref(), identity.as_ref()),
        image_hash: opened.manifest.as_ref().and_then(|m| m.image_hash()),
        memory_hash: opened.manifest.as_ref().and_then(|m| m.memory_hash()),
        time_map,
        time_map_from,
        reread: opened.manifest.as_ref().and_then(|m| m.reread.clone()),
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
    if opened.manifest.is_some() {
        for (name, hash) in [("image", &info.image_hash), ("memory", &info.memory_hash)] {
            match hash {
                Some(h) => println!(
                    "{:<13} {} {} (from the manifest)",
                    format!("{name} hash:"),
                    h.algorithm,
                    h.hex
                ),
                None => println!(
                    "{:<13} not recorded in the manifest",
                    format!("{name} hash:")
                ),
            }
        }
    }
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
    match &info.symbols {
        None => println!("symbols:      none (no kernel symbols captured with this image)"),
        Some(SymbolsInfo {
            place,
            error: Some(error),
            ..
        }) => println!("symbols:      {place}: unreadable: {error}"),
        Some(symbols) => println!(
            "symbols:      {} ({} bytes): kernel {}, kallsyms addresses {}; {}",
            if symbols.place == "image" {
                "inside the image".to_string()
            } else {
                format!("beside the image, {}", symbols.place)
            },
            symbols.bytes,
            symbols.kernel_release.as_deref().unwrap_or("?"),
            symbols.kallsyms_addresses,
            summarize_members(&symbols.members)
        ),
    }
    if let (Some(t), Some(from)) = (&info.time_map, &info.time_map_from) {
        for line in window_lines(t, from) {
            println!("{line}");
        }
    }
    if let Some(r) = &info.reread {
        println!(
            "re-read:      {} of {} pages ({:.3}%) changed since they were copied{}",
            r.pages_changed,
            r.pages_compared,
            r.ratio * 100.0,
            if r.pages_unreadable > 0 {
                format!(", {} not compared (unreadable)", r.pages_unreadable)
            } else {
                String::new()
            }
        );
    }
    if let Some(meta) = &info.metadata {
        println!("metadata:     {}", serde_json::to_string(meta)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// The time map in a few lines: the whole window, the kernel's, the
/// slowest region.
fn window_lines(t: &TimeMapJson, from: &str) -> Vec<String> {
    let secs = |ms: Option<f64>| ms.map_or("?".to_string(), |ms| format!("{:.3} s", ms / 1000.0));
    let mut lines = vec![format!(
        "window:       memory read over {} ({} order; from the {from})",
        secs(t.window_ms),
        t.order
    )];
    match &t.kernel {
        Some(k) => lines.push(format!(
            "kernel:       its image ({:.1} MiB in {} range(s)) read over {}, from {} to {}",
            k.ranges.iter().map(|r| r.bytes).sum::<u64>() as f64 / (1 << 20) as f64,
            k.ranges.len(),
            secs(k.window_ms),
            secs(k.first_ms),
            secs(k.last_ms)
        )),
        None => lines.push("kernel:       where its image lies is not known".into()),
    }
    if let Some((start, bytes, ms)) = t.slowest_region() {
        lines.push(format!(
            "slowest:      region {start} ({:.1} MiB) read over {}",
            bytes as f64 / (1 << 20) as f64,
            secs(Some(ms))
        ));
    }
    lines
}

/// The members, module BTF counted instead of listed.
fn summarize_members(members: &[String]) -> String {
    let modules = members
        .iter()
        .filter(|m| m.starts_with(pmem_symbols::bundle::MODULE_BTF_DIR))
        .count();
    let mut names: Vec<&str> = members
        .iter()
        .filter(|m| !m.starts_with(pmem_symbols::bundle::MODULE_BTF_DIR))
        .map(String::as_str)
        .collect();
    let counted = format!("BTF of {modules} module(s)");
    if modules > 0 {
        names.push(&counted);
    }
    names.join(", ")
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
