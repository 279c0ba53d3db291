//! `pmem convert`: image -> image in another format, through the same
//! pipeline as acquisition. The output depends only on the input (and its
//! manifest): metadata is carried over, never taken from this machine.

use crate::image;
use crate::job::{self, Job, Output};
use crate::manifest::{self, HostJson, Origin, SourceJson, WindowsJson};
use anyhow::{Context, Result};
use pmem_core::{Arch, Plan, WindowsMetadata};
use pmem_formats::Format;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Output format: lime, raw, elf, avml (compressed LiME), macho, aff4,
    /// or dmp (Windows crash dump: needs Windows metadata, from the input
    /// or --cr3).
    #[arg(long, short)]
    format: Format,
    /// Windows metadata for a crash dump whose input carries none (raw,
    /// LiME, or an image acquired elsewhere): the System process's
    /// directory table base, in hex. Overrides the input's value.
    #[arg(long, value_name = "HEX")]
    cr3: Option<String>,
    /// Windows build number for the dump header (e.g. 19041).
    #[arg(long, value_name = "N")]
    build: Option<u32>,
    /// Address of the kernel's KDBG block, in hex (0 = unknown).
    #[arg(long, value_name = "HEX")]
    kdbg: Option<String>,
    /// Number of processors for the dump header.
    #[arg(long, value_name = "N")]
    processors: Option<u32>,
    /// Architecture to record when the input does not say (LiME, raw
    /// without manifest): x86_64, aarch64, i686.
    #[arg(long)]
    arch: Option<String>,
    /// Manifest of the input (default: INPUT.json if present).
    #[arg(long)]
    input_manifest: Option<PathBuf>,
    /// Where to write the output's manifest (default: OUTPUT.json).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Overwrite an existing output and manifest.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    compress: crate::compress::CompressArgs,
    #[command(flatten)]
    upload: crate::upload::UploadArgs,
    #[command(flatten)]
    identity: image::IdentityArgs,
    /// Input image (any format pmem reads).
    input: PathBuf,
    /// Output image, or - for standard output.
    output: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    image::set_identity(&args.identity)?;
    let mut opened = image::open(&args.input, args.input_manifest.as_deref())?;
    if let Some(reason) = &opened.ranges_unproven {
        // The reader then holds only the blocks: convert those, never the
        // manifest's unproven ranges as zeros. The memory is the same at
        // every address (left-out frames are zeros either way); only the
        // range list is the blocks' one. Older pmem AVML images (zero
        // frames left out at a range's edges too) stay convertible.
        eprintln!(
            "warning: {}: its manifest does not match the image ({reason}); \
             converting only the memory the image's blocks hold",
            args.input.display()
        );
    }
    let reader = &opened.reader;
    // The acquisition's own record, from the image itself or its manifest.
    let embedded: Option<Origin> = reader
        .metadata_json()
        .and_then(|text| serde_json::from_str(text).ok());
    let inherited = embedded
        .clone()
        .or_else(|| opened.manifest.as_ref().map(|m| m.origin.clone()));
    let arch = match (&args.arch, reader.arch(), &inherited) {
        (Some(name), _, _) => {
            Arch::from_name(name).with_context(|| format!("--arch {name}: unknown architecture"))?
        }
        (None, Some(arch), _) => arch,
        (None, None, Some(origin)) => Arch::from_name(&origin.host.arch).unwrap_or(Arch::X86_64),
        (None, None, None) => {
            eprintln!(
                "pmem: the input does not record its architecture; assuming x86_64 (use --arch)"
            );
            Arch::X86_64
        }
    };
    let windows = windows_metadata(&args, reader.windows(), inherited.as_ref())?;
    let ranges = reader.memory_map().clone();
    let origin = Origin {
        pmem_version: env!("CARGO_PKG_VERSION").to_string(),
        host: inherited.as_ref().map_or_else(
            || HostJson {
                hostname: String::new(),
                kernel_release: String::new(),
                arch: arch.name(),
            },
            |o| o.host.clone(),
        ),
        source: SourceJson {
            kind: "image".into(),
            path: args.input.display().to_string(),
            format: Some(reader.format().name().to_string()),
            skipped: Vec::new(),
            direct_map_offset: reader.direct_map_offset().map(|o| format!("{o:#x}")),
            vmcoreinfo: reader.vmcoreinfo().is_some(),
            module_version: None,
        },
        system_ram: inherited
            .as_ref()
            .map_or_else(|| manifest::ranges_json(&ranges), |o| o.system_ram.clone()),
        not_acquired: inherited
            .as_ref()
            .map_or_else(Vec::new, |o| o.not_acquired.clone()),
        started_at: crate::host::now(),
        windows: windows.as_ref().map(|w| keep_mode(w, inherited.as_ref())),
        macos: inherited.as_ref().and_then(|o| o.macos.clone()),
    };
    // Carry the embedded note through unchanged, so conversions are
    // deterministic and ELF -> X -> ELF keeps the original metadata. Windows
    // metadata the note lacks (from a dump header or --cr3) is added; a
    // note made here takes its time from that metadata, never from the clock.
    let metadata_json = match reader.metadata_json() {
        Some(text) => match (&embedded, &windows) {
            (Some(note), Some(w)) if note.windows.is_none() => {
                let mut note = note.clone();
                note.windows = Some(WindowsJson::from(w));
                Some(serde_json::to_string(&note)?)
            }
            _ => Some(text.to_string()),
        },
        None => match (&inherited, &windows) {
            (Some(origin), w) => {
                let mut note = origin.clone();
                if note.windows.is_none() {
                    note.windows = w.as_ref().map(WindowsJson::from);
                }
                Some(serde_json::to_string(&note)?)
            }
            (None, Some(w)) => {
                let mut note = origin.clone();
                note.started_at = filetime_rfc3339(w.system_time);
                note.source.path = String::new();
                Some(serde_json::to_string(&note)?)
            }
            (None, None) => None,
        },
    };
    let plan = Plan {
        ranges,
        arch,
        direct_map_offset: reader.direct_map_offset(),
        vmcoreinfo: reader.vmcoreinfo().map(<[u8]>::to_vec),
        metadata_json,
        windows,
    };
    let inherited_unreadable = opened
        .manifest
        .as_ref()
        .map_or_else(Vec::new, |m| m.unreadable_pages.clone());
    crate::upload::configure(&args.upload)?;
    let output = Output::parse(&args.output);
    let manifest_path = output.local_manifest_path(args.manifest.as_deref());
    let manifest = job::run(Job {
        source: opened.reader.as_mut(),
        plan,
        format: args.format,
        output: output.clone(),
        manifest_path,
        origin,
        inherited_unreadable,
        overwrite: args.force,
        quiet: args.quiet,
        compress: args.compress.clone(),
        // The memory hash ties the output to the input whatever the
        // formats: recorded unless --no-hash asks for no hashes at all.
        memory_hash: !args.compress.no_hash,
    })?;
    eprintln!("{}", job::summary_line(&manifest, &output));
    Ok(ExitCode::SUCCESS)
}

/// The Windows metadata of the output: the input's (crash dump header,
/// embedded note or manifest), with fields given on the command line
/// taking precedence. `None` when neither says anything.
fn windows_metadata(
    args: &Args,
    from_image: Option<WindowsMetadata>,
    inherited: Option<&Origin>,
) -> Result<Option<WindowsMetadata>> {
    let from_origin = match inherited.and_then(|o| o.windows.as_ref()) {
        Some(json) => Some(
            json.to_metadata()
                .context("reading the Windows metadata of the input's manifest or note")?,
        ),
        None => None,
    };
    let base = from_image.or(from_origin);
    let given = args.cr3.is_some()
        || args.build.is_some()
        || args.kdbg.is_some()
        || args.processors.is_some();
    if !given {
        return Ok(base);
    }
    if base.is_none() && args.cr3.is_none() {
        anyhow::bail!("the input carries no Windows metadata: --build, --kdbg and --processors need --cr3 too");
    }
    let mut w = base.unwrap_or_else(|| WindowsMetadata {
        processors: 1,
        nt_build_number: 0xF000_0000,
        // The acquisition time, when the input's record has one.
        system_time: inherited
            .and_then(|o| humantime::parse_rfc3339(&o.started_at).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| WindowsMetadata::filetime_from_unix(d.as_secs())),
        ..WindowsMetadata::default()
    });
    if let Some(cr3) = &args.cr3 {
        w.cr3 = parse_hex_arg("--cr3", cr3)?;
    }
    if let Some(build) = args.build {
        w.nt_build_number = (w.nt_build_number & !0xFFFF) | u64::from(build & 0xFFFF);
    }
    if let Some(kdbg) = &args.kdbg {
        w.kdbg = parse_hex_arg("--kdbg", kdbg)?;
    }
    if let Some(processors) = args.processors {
        w.processors = processors;
    }
    Ok(Some(w))
}

fn parse_hex_arg(name: &str, text: &str) -> Result<u64> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    u64::from_str_radix(digits, 16).with_context(|| format!("{name} {text}: not a hex number"))
}

/// The manifest's record of `w`, keeping the live acquisition's driver mode.
fn keep_mode(w: &WindowsMetadata, inherited: Option<&Origin>) -> WindowsJson {
    let mut json = WindowsJson::from(w);
    json.mode = inherited
        .and_then(|o| o.windows.as_ref())
        .and_then(|j| j.mode.clone());
    json
}

/// RFC 3339 text of a FILETIME (the Unix epoch when before 1970).
fn filetime_rfc3339(filetime: u64) -> String {
    let secs = WindowsMetadata::unix_from_filetime(filetime).unwrap_or(0);
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(time).to_string()
}
