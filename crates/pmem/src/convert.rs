//! `pmem convert`: image -> image in another format, through the same
//! pipeline as acquisition. The output depends only on the input (and its
//! manifest): metadata is carried over, never taken from this machine.

use crate::carried_symbols::CarriedSymbols;
use crate::compress::FormatArg;
use crate::destination::{Destination, Encryption};
use crate::image;
use crate::image_origin::{self, ImageInput, ImageOrigin};
use crate::interrupt::Watch;
use crate::job::{self, Job};
use crate::manifest::{Origin, TimeMapJson};
use crate::output_args::OutputArgs;
use anyhow::{Context, Result};
use pmem_core::{Arch, TimeMapPlan, WindowsMetadata};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Output format. dmp (Windows crash dump) needs Windows metadata,
    /// from the input or --cr3.
    #[arg(long, short, value_enum, ignore_case = true)]
    format: FormatArg,
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
    #[command(flatten)]
    output_options: OutputArgs,
    #[command(flatten)]
    identity: image::IdentityArgs,
    /// Input image (any format pmem reads).
    input: PathBuf,
    /// Output image, or - for standard output.
    output: PathBuf,
}

pub fn run(args: Args, watch: &Watch) -> Result<ExitCode> {
    let identity = args.identity.load()?;
    let mut opened = image::open(
        &args.input,
        args.input_manifest.as_deref(),
        identity.as_ref(),
    )?;
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
    let recorded = reader.metadata();
    let embedded = image_origin::embedded(recorded);
    let inherited = embedded
        .clone()
        .or_else(|| opened.manifest.as_ref().map(|m| m.origin.clone()));
    let arch = match (&args.arch, recorded.arch, &inherited) {
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
    let windows = windows_metadata(&args, recorded.windows, inherited.as_ref())?;
    let ImageOrigin { origin, mut plan } = ImageOrigin::new(ImageInput {
        path: &args.input,
        format: reader.format(),
        recorded,
        ranges: reader.memory_map().clone(),
        arch,
        windows,
        embedded: embedded.as_ref(),
        inherited: inherited.as_ref(),
    })?;
    let inherited_unreadable = opened
        .manifest
        .as_ref()
        .map_or_else(Vec::new, |m| m.unreadable_pages.clone());
    // When the memory was read, and what a re-read found, are facts of the
    // acquisition: they travel on, in the manifest and in the formats that
    // carry a time map. The JSON is written out again from its parsed form.
    if let Some((time_map, _)) =
        TimeMapJson::of_image(recorded.time_map_json.as_deref(), opened.manifest.as_ref())
    {
        plan.time_map = TimeMapPlan::Carried(serde_json::to_string(&time_map)?);
    }
    let inherited_reread = opened.manifest.as_ref().and_then(|m| m.reread.clone());
    // The input's symbols travel on: inside it, or its IMAGE.symbols. A
    // damaged bundle does not stop the memory's conversion: said, and left.
    let symbols = match CarriedSymbols::of_image(
        &args.input,
        opened.reader.metadata().symbols.as_deref(),
        identity.as_ref(),
    ) {
        Ok(found) => found.map(|(symbols, _)| symbols),
        Err(err) => {
            eprintln!(
                "pmem: warning: the input's kernel symbols are not carried over: {}",
                crate::errors::error_text(&err)
            );
            None
        }
    };
    let encryption = Encryption::parse(&args.output_options.upload)?;
    let destination = Destination::parse(&args.output, &args.output_options.upload);
    let manifest_path = destination.local_manifest_path(args.output_options.manifest.as_deref());
    let manifest = job::run(Job {
        source: opened.reader.as_mut(),
        plan,
        format: args.format.0,
        destination: destination.clone(),
        encryption,
        manifest_path,
        origin,
        inherited_unreadable,
        inherited_reread,
        compression: args.output_options.compress,
        sink: args.output_options.sink_options(),
        quiet: args.output_options.quiet,
        // The memory hash ties the output to the input whatever the
        // formats: recorded unless --hash none asks for no hashes at all.
        memory_hash: args.output_options.hash().is_some(),
        watch,
        symbols,
        symbols_file: args.output_options.symbols_file.clone(),
        reread: false,
        order: pmem_core::ReadOrder::Address,
    })?;
    eprintln!("{}", job::summary_line(&manifest, &destination));
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
