//! `pmem acquire`: live memory -> image.

#[cfg(target_os = "linux")]
use crate::carried_symbols::CarriedSymbols;
use crate::compress::FormatArg;
use crate::destination::{Destination, Encryption};
use crate::interrupt::Watch;
use crate::job::{self, Job};
use crate::output_args::OutputArgs;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Image format. dmp (Windows crash dump) is written on Windows only,
    /// where the driver gives the kernel's metadata; elsewhere convert an
    /// image with `pmem convert --format dmp --cr3 HEX`.
    #[arg(long, short, value_enum, ignore_case = true, default_value = "lime")]
    format: FormatArg,
    // Memory source: the names are SourceKind's (source_help).
    #[arg(long, default_value = "auto", help = source_help())]
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) source: String,
    /// Read the physical memory map from this file instead of /proc/iomem.
    /// (macOS: read the MacPmem info from this file instead of /dev/pmem_info.)
    #[arg(long)]
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) iomem: Option<PathBuf>,
    /// Windows: the WinPmem driver (winpmem_x64.sys / winpmem_x86.sys) to
    /// load for the acquisition and unload afterwards. Without it pmem uses
    /// the driver embedded at build time, or one `pmem driver load` left.
    #[cfg(windows)]
    #[arg(long, value_name = "PATH")]
    pub driver: Option<PathBuf>,
    /// Windows: how the driver maps memory: pte (default on 64-bit),
    /// physical (default on 32-bit) or iospace (MmMapIoSpace; can crash
    /// some machines).
    #[cfg(windows)]
    #[arg(long)]
    pub mode: Option<String>,
    #[command(flatten)]
    output_options: OutputArgs,
    /// Also record memory_hash, the hash of the memory content that is
    /// the same whatever the format, with the --hash algorithm (BLAKE3
    /// with --hash none; costs a second hash pass; `pmem convert` and
    /// `pmem verify` always compute it).
    #[arg(long)]
    memory_hash: bool,
    /// Linux: do not capture the kernel's symbols (BTF, kallsyms, banner,
    /// modules, config; `pmem symbols` turns them into a Volatility 3
    /// ISF). They are captured by default, before the copy starts.
    #[arg(long)]
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    no_symbols: bool,
    /// After the copy, read all memory again and count the pages that
    /// changed since they were copied (smear), from an 8-byte digest of
    /// each page kept during the copy (2 MiB per GiB of RAM). Nothing more
    /// is written: the manifest records the count, and stderr the ratio.
    #[arg(long)]
    reread: bool,
    /// The order memory is read in. kernel-first reads the kernel image
    /// (Linux: iomem's Kernel code/data/bss) first, so that the structures
    /// analysis starts from are copied within a short window; it holds
    /// the kernel image in memory meanwhile (tens of MiB; above 256 MiB
    /// pmem reads in address order).
    #[arg(long, value_enum, default_value = "address")]
    order: OrderArg,
    /// Image file, or - for standard output.
    output: PathBuf,
}

/// `--order`'s values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OrderArg {
    Address,
    KernelFirst,
}

impl From<OrderArg> for pmem_core::ReadOrder {
    fn from(order: OrderArg) -> Self {
        match order {
            OrderArg::Address => pmem_core::ReadOrder::Address,
            OrderArg::KernelFirst => pmem_core::ReadOrder::KernelFirst,
        }
    }
}

/// `--source`'s help: "Memory source: auto, kcore, crash, mem or module
/// (pmem's kernel module, ...)", the names from [`SourceKind::ALL`].
///
/// [`SourceKind::ALL`]: pmem_sources::SourceKind::ALL
pub(crate) fn source_help() -> String {
    format!(
        "Memory source: {} (pmem's kernel module, see `pmem module`), optionally with a \
         device path (e.g. kcore:/proc/kcore)",
        pmem_sources::SourceKind::names()
    )
}

pub fn run(args: Args, watch: &Watch) -> Result<ExitCode> {
    #[cfg(not(windows))]
    if args.format.0 == pmem_formats::Format::Dmp {
        anyhow::bail!(
            "--format dmp writes a Windows crash dump, which needs the Windows kernel's \
             metadata (CR3, build, KDBG) that only pmem's Windows driver reads: run \
             `pmem acquire --format dmp` on Windows. Here acquire lime, raw or elf; \
             `pmem convert IMAGE OUTPUT.dmp --format dmp --cr3 HEX [--build N]` turns an \
             image of a Windows machine (a VM's memory, say) into a crash dump"
        );
    }
    let started_at = crate::host::now();
    // Dropped when this function returns, after the manifest is written: on
    // Windows that closes the device and unloads the driver, also on error.
    #[cfg(windows)]
    let mut live =
        crate::windows::open_live(args.driver.as_deref(), args.mode.as_deref(), started_at)?;
    #[cfg(not(windows))]
    let mut live = crate::live::open(
        &pmem_sources::LiveRequest {
            source: args.source.clone(),
            map_path: args.iomem.clone(),
            ..Default::default()
        },
        started_at,
    )?;
    // Before the copy, never during it: reading files adds no smear.
    #[cfg(target_os = "linux")]
    let symbols =
        (!args.no_symbols).then(|| CarriedSymbols::capture(live.plan.vmcoreinfo.as_deref()));
    #[cfg(not(target_os = "linux"))]
    let symbols = None;
    let encryption = Encryption::parse(&args.output_options.upload)?;
    let destination = Destination::parse(&args.output, &args.output_options.upload);
    let manifest_path = destination.local_manifest_path(args.output_options.manifest.as_deref());
    // The copy measures its own time map: in the manifest, and in the
    // formats that carry one (ELF reserves room for it before the copy).
    live.plan.time_map = pmem_core::TimeMapPlan::Measured;
    let manifest = job::run(Job {
        source: live.memory.as_mut(),
        plan: live.plan,
        format: args.format.0,
        destination: destination.clone(),
        encryption,
        manifest_path: manifest_path.clone(),
        origin: live.origin,
        inherited_unreadable: Vec::new(),
        inherited_reread: None,
        compression: args.output_options.compress,
        sink: args.output_options.sink_options(),
        quiet: args.output_options.quiet,
        memory_hash: args.memory_hash,
        watch,
        symbols,
        symbols_file: args.output_options.symbols_file.clone(),
        reread: args.reread,
        order: args.order.into(),
    })?;
    eprintln!("{}", job::summary_line(&manifest, &destination));
    if let Some(path) = manifest_path {
        eprintln!("pmem: manifest {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
