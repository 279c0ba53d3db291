//! `pmem convert`: image -> image in another format, through the same
//! pipeline as acquisition. The output depends only on the input (and its
//! manifest): metadata is carried over, never taken from this machine.

use crate::image;
use crate::job::{self, Job, Output};
use crate::manifest::{self, HostJson, Origin, SourceJson};
use anyhow::{Context, Result};
use pmem_core::{Arch, Plan};
use pmem_formats::Format;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Output format: lime, raw or elf.
    #[arg(long, short)]
    format: Format,
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
    /// Input image (any format pmem reads).
    input: PathBuf,
    /// Output image, or - for standard output.
    output: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let mut opened = image::open(&args.input, args.input_manifest.as_deref())?;
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
        },
        system_ram: inherited
            .as_ref()
            .map_or_else(|| manifest::ranges_json(&ranges), |o| o.system_ram.clone()),
        not_acquired: inherited
            .as_ref()
            .map_or_else(Vec::new, |o| o.not_acquired.clone()),
        started_at: crate::host::now(),
    };
    // Carry the embedded note through unchanged, so conversions are
    // deterministic and ELF -> X -> ELF keeps the original metadata.
    let metadata_json = match (reader.metadata_json(), &inherited) {
        (Some(text), _) => Some(text.to_string()),
        (None, Some(origin)) => Some(serde_json::to_string(origin)?),
        (None, None) => None,
    };
    let plan = Plan {
        ranges,
        arch,
        direct_map_offset: reader.direct_map_offset(),
        vmcoreinfo: reader.vmcoreinfo().map(<[u8]>::to_vec),
        metadata_json,
        windows: None,
    };
    let inherited_unreadable = opened
        .manifest
        .as_ref()
        .map_or_else(Vec::new, |m| m.unreadable_pages.clone());
    let output = Output::parse(&args.output);
    let manifest_path = match (&args.manifest, &output) {
        (Some(path), _) => Some(path.clone()),
        (None, Output::File(path)) => Some(manifest::default_path(path)),
        (None, Output::Stdout) => None,
    };
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
    })?;
    eprintln!("{}", job::summary_line(&manifest, &output));
    Ok(ExitCode::SUCCESS)
}
