//! `pmem acquire`: live memory -> image.

use crate::job::{self, Job, Output};
use crate::manifest::Origin;
use anyhow::Result;
use pmem_core::{PhysicalMemory, Plan};
use pmem_formats::Format;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Image format: lime, raw (zero-padded, sparse on files), elf (ELF
    /// core), avml (compressed LiME), macho (Mach-O core), aff4 (AFF4
    /// volume), or dmp (Windows crash dump: on Windows only, where the
    /// driver gives the kernel's metadata; elsewhere convert an image with
    /// `pmem convert --format dmp --cr3 HEX`).
    #[arg(long, short, default_value = "lime")]
    format: Format,
    /// Memory source: auto, kcore, crash, mem or module (pmem's kernel
    /// module, see `pmem module`), optionally with a device path (e.g.
    /// kcore:/proc/kcore).
    #[arg(long, default_value = "auto")]
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
    /// Where to write the JSON manifest (default: OUTPUT.json; none for
    /// standard output unless given).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Overwrite an existing image and manifest.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    compress: crate::compress::CompressArgs,
    #[command(flatten)]
    upload: crate::upload::UploadArgs,
    /// Also record memory_sha256, the hash of the memory content that is
    /// the same whatever the format (costs a second hash pass; `pmem
    /// convert` and `pmem verify` always compute it).
    #[arg(long)]
    memory_hash: bool,
    /// Image file, or - for standard output.
    output: PathBuf,
}

/// An opened live source with what the image and the manifest say about it.
pub struct Live {
    pub memory: Box<dyn PhysicalMemory>,
    pub origin: Origin,
    pub plan: Plan,
}

pub fn run(args: Args) -> Result<ExitCode> {
    #[cfg(not(windows))]
    if args.format == Format::Dmp {
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
    let mut live = crate::windows::open_live(&args, started_at)?;
    #[cfg(target_os = "macos")]
    let mut live = crate::macos::open_live(&args.source, args.iomem.as_deref(), started_at)?;
    #[cfg(not(any(windows, target_os = "macos")))]
    let mut live = open_live(&args, started_at)?;
    crate::upload::configure(&args.upload)?;
    let output = Output::parse(&args.output);
    let manifest_path = output.local_manifest_path(args.manifest.as_deref());
    let manifest = job::run(Job {
        source: live.memory.as_mut(),
        plan: live.plan,
        format: args.format,
        output: output.clone(),
        manifest_path: manifest_path.clone(),
        origin: live.origin,
        inherited_unreadable: Vec::new(),
        overwrite: args.force,
        quiet: args.quiet,
        compress: args.compress.clone(),
        memory_hash: args.memory_hash,
    })?;
    eprintln!("{}", job::summary_line(&manifest, &output));
    if let Some(path) = manifest_path {
        eprintln!("pmem: manifest {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The Linux sources: /proc/kcore, /dev/crash, /dev/mem.
#[cfg(not(any(windows, target_os = "macos")))]
fn open_live(args: &Args, started_at: String) -> Result<Live> {
    use crate::manifest::{self, NotAcquiredJson, RangeJson, SkippedJson, SourceJson};
    use anyhow::Context;
    use pmem_sources::SourceRequest;
    let mut request: SourceRequest = args
        .source
        .parse()
        .with_context(|| format!("--source {}", args.source))?;
    request.iomem_path = args.iomem.clone();
    let opened = pmem_sources::open(&request)?;
    let info = &opened.info;
    for (kind, reason) in &info.skipped {
        eprintln!("pmem: source {kind} skipped: {reason}");
    }
    eprintln!(
        "pmem: reading {} ({}) with {} range(s), {:.1} MiB",
        info.path.display(),
        info.kind,
        opened.memory.memory_map().len(),
        opened.memory.memory_map().total_bytes() as f64 / (1 << 20) as f64
    );
    if let Some(version) = &info.module_version {
        eprintln!("pmem: through pmem's kernel module {version}");
    }
    for gap in &info.not_acquired {
        eprintln!("pmem: not acquired: {} ({})", gap.range, gap.reason);
    }

    let origin = Origin {
        pmem_version: env!("CARGO_PKG_VERSION").to_string(),
        host: crate::host::describe(info.arch),
        source: SourceJson {
            kind: info.kind.to_string(),
            path: info.path.display().to_string(),
            format: None,
            skipped: info
                .skipped
                .iter()
                .map(|(kind, reason)| SkippedJson {
                    kind: kind.to_string(),
                    reason: reason.clone(),
                })
                .collect(),
            direct_map_offset: info.direct_map_offset.map(|o| format!("{o:#x}")),
            vmcoreinfo: info.vmcoreinfo.is_some(),
            module_version: info.module_version.clone(),
        },
        system_ram: manifest::ranges_json(&info.system_ram),
        not_acquired: info
            .not_acquired
            .iter()
            .map(|n| NotAcquiredJson {
                range: RangeJson::from(&n.range),
                reason: n.reason.clone(),
            })
            .collect(),
        started_at,
        windows: None,
        macos: None,
    };
    let plan = Plan {
        ranges: opened.memory.memory_map().clone(),
        arch: info.arch,
        direct_map_offset: info.direct_map_offset,
        vmcoreinfo: info.vmcoreinfo.clone(),
        metadata_json: Some(serde_json::to_string(&origin)?),
        windows: None,
    };
    Ok(Live {
        memory: opened.memory,
        origin,
        plan,
    })
}
