//! Windows: acquisition through the WinPmem driver, and `pmem driver`
//! (WinPmem's -l, -u and -d). The protocol lives in
//! pmem_sources::windows; this is the CLI around it.

use crate::live::Live;
use anyhow::{bail, Context, Result};
use pmem_core::{MemoryMap, PhysicalMemory, ReadError};
use pmem_sources::windows::live;
use pmem_sources::windows::{Mode, DEVICE_PATH, SERVICE_NAME};
use pmem_sources::LiveRequest;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A driver embedded at build time (PMEM_EMBED_DRIVER, see build.rs);
/// empty when none was.
static EMBEDDED_DRIVER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/embedded-driver.sys"));

#[derive(clap::Args)]
pub struct DriverArgs {
    #[command(subcommand)]
    command: DriverCommand,
}

#[derive(clap::Subcommand)]
enum DriverCommand {
    /// Load the driver and leave it loaded, so that live analysis tools
    /// (MemProcFS, Volatility's leechcore layer) can read \\.\pmem.
    Load {
        /// The WinPmem driver file (default: the embedded one).
        #[arg(long, value_name = "PATH")]
        driver: Option<PathBuf>,
        /// Also ask the driver to enable writes to physical memory through
        /// \\.\pmem (IOCTL_WRITE_ENABLE), for live tools that write. Only
        /// test-signed WinPmem builds compiled with write support honour it;
        /// released, signed drivers refuse it (pmem then unloads the driver
        /// and fails). Writing physical memory can crash the machine: for
        /// research and learning on test machines, never on regular systems.
        #[arg(long)]
        write: bool,
    },
    /// Stop and delete the driver service left by `driver load`.
    Unload,
    /// Write the driver embedded at build time to PATH.
    Extract {
        /// Where to write the driver file.
        path: PathBuf,
    },
}

pub fn driver(args: DriverArgs) -> Result<ExitCode> {
    match args.command {
        DriverCommand::Load { driver, write } => {
            let temp = driver_path(driver.as_deref())?;
            let path = temp.path().context(
                "no driver to load: pass --driver PATH (the WinPmem driver, winpmem_x64.sys)",
            )?;
            if write {
                eprintln!("pmem: warning: --write: writing physical memory can crash the machine and corrupt its data; it is for research and learning on test machines, never on regular systems");
            }
            // On error (a refused --write too) nothing stays loaded, and an
            // extracted driver file is deleted.
            live::load(path, write)?;
            // The service keeps its own path: an extracted driver must stay.
            temp.keep();
            if write {
                eprintln!("pmem: driver loaded as service {SERVICE_NAME} with writes enabled (IOCTL_WRITE_ENABLE accepted): live tools can read and write {DEVICE_PATH}; sending IOCTL_WRITE_ENABLE again turns writes off; remove it with `pmem driver unload`");
            } else {
                eprintln!("pmem: driver loaded as service {SERVICE_NAME}; read {DEVICE_PATH}; remove it with `pmem driver unload`");
            }
        }
        DriverCommand::Unload => {
            if live::unload()? {
                eprintln!("pmem: driver service {SERVICE_NAME} stopped and deleted");
            } else {
                eprintln!("pmem: no driver service {SERVICE_NAME} is installed");
            }
        }
        DriverCommand::Extract { path } => {
            if EMBEDDED_DRIVER.is_empty() {
                bail!("this pmem was built without an embedded driver (PMEM_EMBED_DRIVER)");
            }
            let mut file = pmem_core::sink::create_image_file(&path, false)
                .with_context(|| format!("creating {}", path.display()))?;
            std::io::Write::write_all(&mut file, EMBEDDED_DRIVER)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "pmem: wrote the embedded driver ({} bytes) to {}",
                EMBEDDED_DRIVER.len(),
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The driver file to install: the given one, the embedded one written to a
/// temporary file, or none (use a driver that is already loaded).
enum DriverFile {
    Given(PathBuf),
    Temporary(PathBuf),
    None,
}

impl DriverFile {
    fn path(&self) -> Option<&Path> {
        match self {
            DriverFile::Given(p) | DriverFile::Temporary(p) => Some(p),
            DriverFile::None => None,
        }
    }

    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for DriverFile {
    fn drop(&mut self) {
        if let DriverFile::Temporary(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn driver_path(given: Option<&Path>) -> Result<DriverFile> {
    if let Some(path) = given {
        return Ok(DriverFile::Given(path.to_path_buf()));
    }
    if EMBEDDED_DRIVER.is_empty() {
        return Ok(DriverFile::None);
    }
    let path = std::env::temp_dir().join(format!("pmem-{}.sys", std::process::id()));
    let mut file = pmem_core::sink::create_image_file(&path, true)
        .with_context(|| format!("extracting the embedded driver to {}", path.display()))?;
    std::io::Write::write_all(&mut file, EMBEDDED_DRIVER)?;
    Ok(DriverFile::Temporary(path))
}

/// The live source and the extracted driver file. Field order is drop
/// order: the driver is unloaded before its file is deleted.
struct WinLive {
    source: Box<dyn PhysicalMemory>,
    _driver_file: DriverFile,
}

impl PhysicalMemory for WinLive {
    fn memory_map(&self) -> &MemoryMap {
        self.source.memory_map()
    }
    fn read_granularity(&self) -> u64 {
        self.source.read_granularity()
    }
    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.source.read_at(addr, buf)
    }
}

/// Opens the WinPmem driver (`driver`: --driver, else the embedded one or
/// one already loaded; `mode`: --mode) and describes the acquisition.
pub fn open_live(driver: Option<&Path>, mode: Option<&str>, started_at: String) -> Result<Live> {
    let mode = match mode {
        Some(text) => Some(text.parse::<Mode>()?),
        None => None,
    };
    if mode == Some(Mode::IoSpace) {
        eprintln!("pmem: warning: iospace mode (MmMapIoSpace) can crash some systems; pte and physical are safer");
    }
    let driver_file = driver_path(driver)?;
    let request = LiveRequest {
        driver: driver_file.path().map(Path::to_path_buf),
        mode,
        ..Default::default()
    };
    let mut source = pmem_sources::open_live(&request).with_context(|| match driver_file.path() {
        Some(path) => format!("acquiring with the driver {}", path.display()),
        None => format!(
            "no driver given and none loaded: pass --driver PATH (the WinPmem driver, e.g. winpmem_x64.sys) or run `pmem driver load --driver PATH` first; {DEVICE_PATH} could not be used"
        ),
    })?;
    crate::live::announce(&source);
    source.memory = Box::new(WinLive {
        source: source.memory,
        _driver_file: driver_file,
    });
    Live::new(source, started_at)
}
