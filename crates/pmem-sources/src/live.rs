//! [`open_live`]: this machine's memory through the source of its OS,
//! described the same way everywhere ([`LiveInfo`]).

use crate::error::SourceError;
use crate::info::NotAcquired;
use crate::kind::{ParseSourceError, SourceKind};
use crate::{macos, windows};
use pmem_core::{Arch, MemoryMap, PhysicalMemory, WindowsMetadata};
use std::path::PathBuf;

/// What [`open_live`] opens, as the command line says it: each OS reads
/// the fields that apply to it.
#[derive(Debug, Clone, Default)]
pub struct LiveRequest {
    /// `--source`: Linux `auto`, `kcore`, `crash`, `mem` or `module`, each
    /// but `auto` with an optional `:PATH`; macOS `auto` or
    /// `macpmem[:PATH]`. Windows has one source, the driver.
    pub source: String,
    /// A file read instead of the OS's memory map: /proc/iomem on Linux,
    /// /dev/pmem_info on macOS.
    pub map_path: Option<PathBuf>,
    /// Windows: the driver file to load (`None`: one already loaded).
    pub driver: Option<PathBuf>,
    /// Windows: how the driver maps memory (`None`: the default for the
    /// machine).
    pub mode: Option<windows::Mode>,
}

/// What the kernel a live source reads says about itself, for the image's
/// metadata and the manifest. Each OS fills its own fields.
#[derive(Debug, Clone, Default)]
pub struct KernelFacts {
    /// Kernel virtual address of physical 0 in the direct map (Linux kcore).
    pub direct_map_offset: Option<u64>,
    /// Descriptor of kcore's VMCOREINFO note (Linux).
    pub vmcoreinfo: Option<Vec<u8>>,
    /// What the WinPmem driver reports (`system_time` is the caller's to
    /// set: the driver gives none), and the mode it maps memory with.
    pub windows: Option<(WindowsMetadata, windows::Mode)>,
    /// What the MacPmem kext's /dev/pmem_info says.
    pub macos: Option<macos::PmemInfo>,
    /// Where the kernel image lies in physical memory (Linux: iomem's
    /// Kernel code/rodata/data/bss, see [`crate::iomem::Iomem::kernel_image`]);
    /// empty when unknown.
    pub kernel_image: Vec<pmem_core::Range>,
}

/// One description of an opened live source, the same on every OS.
#[derive(Debug, Clone)]
pub struct LiveInfo {
    /// The source used: kcore, crash, mem, module, macpmem or winpmem.
    pub kind: String,
    /// The device read.
    pub path: PathBuf,
    /// The machine's architecture (kcore's e_machine on Linux kcore, the
    /// host's elsewhere).
    pub arch: Arch,
    /// The RAM the OS lists, before clipping to whole pages.
    pub system_ram: MemoryMap,
    /// RAM outside the source's memory map, and why.
    pub not_acquired: Vec<NotAcquired>,
    /// Linux `auto`: the sources tried before this one and why each was
    /// skipped.
    pub skipped: Vec<(SourceKind, String)>,
    /// The version of pmem's kernel module (Linux module source only).
    pub module_version: Option<String>,
    /// What the kernel says about itself, by OS.
    pub kernel: KernelFacts,
}

/// A live source ready to copy, and its description.
pub struct LiveSource {
    /// The memory to copy, read through the source.
    pub memory: Box<dyn PhysicalMemory>,
    /// What the source is.
    pub info: LiveInfo,
}

/// Why [`open_live`] failed: the OS's own error, unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// `--source` names no source of this OS.
    #[error("--source {text}: {reason}")]
    SourceName {
        /// The `--source` text.
        text: String,
        /// What it should have been.
        reason: String,
        /// The Linux parser's error (`None` on macOS).
        #[source]
        source: Option<ParseSourceError>,
    },
    /// A Linux source could not be opened.
    #[error(transparent)]
    Linux(#[from] SourceError),
    /// The MacPmem kext's device could not be opened or read.
    #[error(transparent)]
    Macos(#[from] macos::MacosError),
    /// The WinPmem driver could not be loaded, opened or read.
    #[cfg(windows)]
    #[error(transparent)]
    Windows(#[from] windows::live::WindowsError),
}

/// Opens this machine's memory: on Linux as [`open`](crate::open) does, on macOS
/// through the MacPmem kext's /dev/pmem, on Windows through the WinPmem
/// driver (which [`LiveRequest::driver`] loads; dropping the source closes
/// the device and unloads it).
pub fn open_live(request: &LiveRequest) -> Result<LiveSource, LiveError> {
    #[cfg(target_os = "linux")]
    return open_linux(request);
    #[cfg(target_os = "macos")]
    return open_macos(request);
    #[cfg(windows)]
    return open_windows(request);
    #[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
    {
        let _ = request;
        Err(SourceError::UnsupportedOs.into())
    }
}

#[cfg(target_os = "linux")]
fn open_linux(request: &LiveRequest) -> Result<LiveSource, LiveError> {
    let mut linux: crate::kind::SourceRequest =
        request
            .source
            .parse()
            .map_err(|source: ParseSourceError| LiveError::SourceName {
                text: request.source.clone(),
                reason: source.to_string(),
                source: Some(source),
            })?;
    linux.iomem_path = request.map_path.clone();
    let opened = crate::open::open(&linux)?;
    let info = opened.info;
    Ok(LiveSource {
        memory: opened.memory,
        info: LiveInfo {
            kind: info.kind.to_string(),
            path: info.path,
            arch: info.arch,
            system_ram: info.system_ram,
            not_acquired: info.not_acquired,
            skipped: info.skipped,
            module_version: info.module_version,
            kernel: KernelFacts {
                direct_map_offset: info.direct_map_offset,
                vmcoreinfo: info.vmcoreinfo,
                kernel_image: info.iomem.kernel_image(),
                ..KernelFacts::default()
            },
        },
    })
}

#[cfg(target_os = "macos")]
fn open_macos(request: &LiveRequest) -> Result<LiveSource, LiveError> {
    let (device, info_path) = macos::device_paths(&request.source, request.map_path.as_deref())
        .map_err(|reason| LiveError::SourceName {
            text: request.source.clone(),
            reason: reason.to_string(),
            source: None,
        })?;
    let opened = macos::live::open(&device, &info_path)?;
    // RAM as the EFI map lists it, before clipping to whole pages.
    let system_ram = MemoryMap::normalized(
        opened
            .info
            .records
            .iter()
            .filter(|r| r.readable())
            .filter_map(|r| r.range())
            .collect::<Vec<pmem_core::Range>>(),
    );
    Ok(LiveSource {
        memory: opened.memory,
        info: LiveInfo {
            kind: "macpmem".into(),
            path: device,
            arch: Arch::host(),
            system_ram,
            not_acquired: opened.not_acquired,
            skipped: Vec::new(),
            module_version: None,
            kernel: KernelFacts {
                macos: Some(opened.info),
                ..KernelFacts::default()
            },
        },
    })
}

#[cfg(windows)]
fn open_windows(request: &LiveRequest) -> Result<LiveSource, LiveError> {
    let source = windows::live::open(request.driver.as_deref(), request.mode)?;
    let arch = match windows::InfoLayout::native() {
        windows::InfoLayout::X64 => Arch::X86_64,
        windows::InfoLayout::X86 => Arch::X86,
    };
    let info = LiveInfo {
        kind: "winpmem".into(),
        path: windows::DEVICE_PATH.into(),
        arch,
        system_ram: source.info.runs.clone(),
        not_acquired: Vec::new(),
        skipped: Vec::new(),
        module_version: None,
        kernel: KernelFacts {
            windows: Some((source.info.windows, source.mode)),
            ..KernelFacts::default()
        },
    };
    Ok(LiveSource {
        memory: Box::new(source),
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn open_live_describes_a_linux_source() {
        use crate::testing::{iomem_text, KcoreBuilder, Segment};
        use pmem_core::Range;
        const MIB: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let kcore = dir.path().join("kcore");
        KcoreBuilder::new(Arch::X86_64)
            .vmcoreinfo(b"OSRELEASE=6.1.0\n")
            .segment(Segment::ram(MIB, 3 * MIB))
            .write(&kcore)
            .unwrap();
        let iomem = dir.path().join("iomem");
        let ram = [Range::new(MIB, 4 * MIB).unwrap()];
        std::fs::write(&iomem, iomem_text(&ram)).unwrap();
        let source = open_live(&LiveRequest {
            source: format!("kcore:{}", kcore.display()),
            map_path: Some(iomem),
            ..LiveRequest::default()
        })
        .unwrap();
        let info = &source.info;
        assert_eq!((info.kind.as_str(), &info.path), ("kcore", &kcore));
        assert_eq!(info.arch, Arch::X86_64);
        assert_eq!(info.system_ram.ranges(), &ram);
        assert_eq!(source.memory.memory_map().ranges(), &ram);
        assert!(info.kernel.direct_map_offset.is_some());
        assert_eq!(
            info.kernel.vmcoreinfo.as_deref(),
            Some(&b"OSRELEASE=6.1.0\n"[..])
        );
        assert!(info.kernel.windows.is_none() && info.kernel.macos.is_none());

        let err = open_live(&LiveRequest {
            source: "floppy".into(),
            ..LiveRequest::default()
        })
        .err()
        .unwrap();
        assert!(
            err.to_string()
                .starts_with("--source floppy: invalid source"),
            "{err}"
        );
    }

    #[test]
    fn macos_source_names() {
        let (d, i) = macos::device_paths("auto", None).unwrap();
        assert_eq!(
            (d.to_str(), i.to_str()),
            (Some("/dev/pmem"), Some("/dev/pmem_info"))
        );
        let (d, _) = macos::device_paths("macpmem:/tmp/x", None).unwrap();
        assert_eq!(d.to_str(), Some("/tmp/x"));
        assert!(macos::device_paths("kcore", None).is_err());
        assert!(macos::device_paths("macpmem:", None).is_err());
    }
}
