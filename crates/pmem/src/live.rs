//! What opening a live source gives `acquire`, whatever the OS: the memory
//! to read, and what the image and the manifest say about it, made in one
//! place from pmem_sources' one description of a live source.
//!
//! On macOS the source is the MacPmem/OSXPMem kext's `/dev/pmem`, and
//! everything its `/dev/pmem_info` says goes into the manifest's `macos`
//! object (and so into the image's metadata note); the kext is the user's
//! to load, pmem ships none. On Windows it is the WinPmem driver (see
//! windows.rs for loading it).

use crate::manifest::{
    self, MacosJson, NotAcquiredJson, Origin, RangeJson, SkippedJson, SourceJson, WindowsJson,
};
use anyhow::Result;
use pmem_core::{MemoryMap, PhysicalMemory, Plan, WindowsMetadata};
use pmem_sources::{LiveInfo, LiveSource};

/// An opened live source with what the image and the manifest say about it.
pub struct Live {
    pub memory: Box<dyn PhysicalMemory>,
    pub origin: Origin,
    pub plan: Plan,
}

/// Opens this machine's memory (Linux and macOS; Windows goes through
/// windows.rs, which loads the driver) and says on stderr what is read.
#[cfg(not(windows))]
pub fn open(request: &pmem_sources::LiveRequest, started_at: String) -> Result<Live> {
    let source = pmem_sources::open_live(request)?;
    announce(&source);
    Live::new(source, started_at)
}

impl Live {
    /// The manifest's origin and the image's plan of an opened source;
    /// `started_at` is when the acquisition started (RFC 3339).
    pub fn new(source: LiveSource, started_at: String) -> Result<Live> {
        let LiveSource { memory, mut info } = source;
        if let Some((windows, _)) = &mut info.kernel.windows {
            // The driver reports no time: a crash dump's SystemTime is the
            // acquisition's start.
            windows.system_time = humantime::parse_rfc3339(&started_at)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| WindowsMetadata::filetime_from_unix(d.as_secs()));
        }
        let origin = origin(&info, started_at);
        let plan = Plan {
            ranges: memory.memory_map().clone(),
            arch: info.arch,
            direct_map_offset: info.kernel.direct_map_offset,
            vmcoreinfo: info.kernel.vmcoreinfo,
            metadata_json: Some(serde_json::to_string(&origin)?),
            windows: info.kernel.windows.map(|(windows, _)| windows),
            symbols: None,
            kernel_image: MemoryMap::normalized(info.kernel.kernel_image)
                .intersect(memory.memory_map())
                .ranges()
                .to_vec(),
            time_map: pmem_core::TimeMapPlan::None,
        };
        Ok(Live {
            memory,
            origin,
            plan,
        })
    }
}

/// The manifest's record of where a live acquisition came from.
fn origin(info: &LiveInfo, started_at: String) -> Origin {
    Origin {
        pmem_version: env!("CARGO_PKG_VERSION").to_string(),
        host: crate::host::describe(info.arch),
        source: SourceJson {
            kind: info.kind.clone(),
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
            direct_map_offset: info.kernel.direct_map_offset.map(|o| format!("{o:#x}")),
            vmcoreinfo: info.kernel.vmcoreinfo.is_some(),
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
        windows: info
            .kernel
            .windows
            .as_ref()
            .map(|(windows, mode)| WindowsJson {
                mode: Some(mode.name().to_string()),
                ..WindowsJson::from(windows)
            }),
        macos: info.kernel.macos.as_ref().map(MacosJson::from),
    }
}

/// What is about to be read, on stderr.
pub fn announce(source: &LiveSource) {
    let info = &source.info;
    let map = source.memory.memory_map();
    let mib = map.total_bytes() as f64 / (1 << 20) as f64;
    if let Some(kext) = &info.kernel.macos {
        eprintln!(
            "pmem: reading {} (MacPmem kext) with {} range(s), {:.1} MiB; {}; DTB {:#x}, KASLR slide {:#x}",
            info.path.display(),
            map.len(),
            mib,
            kext.kernel_version,
            kext.dtb,
            kext.kaslr_slide
        );
        return;
    }
    if let Some((windows, mode)) = &info.kernel.windows {
        eprintln!(
            "pmem: driver mode {}, CR3 {:#x}, kernel base {:#x}, build {}, {} processor(s), {} run(s), {:.1} MiB",
            mode,
            windows.cr3,
            windows.kernel_base,
            windows.build(),
            windows.processors,
            map.len(),
            mib
        );
        return;
    }
    for (kind, reason) in &info.skipped {
        eprintln!("pmem: source {kind} skipped: {reason}");
    }
    eprintln!(
        "pmem: reading {} ({}) with {} range(s), {:.1} MiB",
        info.path.display(),
        info.kind,
        map.len(),
        mib
    );
    if let Some(version) = &info.module_version {
        eprintln!("pmem: through pmem's kernel module {version}");
    }
    for gap in &info.not_acquired {
        eprintln!("pmem: not acquired: {} ({})", gap.range, gap.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmem_core::{Arch, MemoryMap, Range, ReadError};
    use pmem_sources::windows::Mode;
    use pmem_sources::KernelFacts;

    struct Zeros(MemoryMap);

    impl PhysicalMemory for Zeros {
        fn memory_map(&self) -> &MemoryMap {
            &self.0
        }
        fn read_at(&mut self, _addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            buf.fill(0);
            Ok(())
        }
    }

    #[test]
    fn a_driver_source_gets_its_time_and_mode_recorded() {
        let map = MemoryMap::new(vec![Range::new(0x1000, 0x9f000).unwrap()]).unwrap();
        let windows = WindowsMetadata {
            cr3: 0x1aa000,
            processors: 2,
            ..WindowsMetadata::default()
        };
        let source = LiveSource {
            memory: Box::new(Zeros(map.clone())),
            info: LiveInfo {
                kind: "winpmem".into(),
                path: "\\\\.\\pmem".into(),
                arch: Arch::X86_64,
                system_ram: map.clone(),
                not_acquired: Vec::new(),
                skipped: Vec::new(),
                module_version: None,
                kernel: KernelFacts {
                    windows: Some((windows, Mode::Pte)),
                    ..KernelFacts::default()
                },
            },
        };
        let live = Live::new(source, "2024-01-01T00:00:00Z".into()).unwrap();
        let recorded = live.plan.windows.expect("Windows metadata in the plan");
        assert_eq!(
            recorded.system_time,
            WindowsMetadata::filetime_from_unix(1_704_067_200)
        );
        assert_eq!(recorded.cr3, 0x1aa000);
        let json = live
            .origin
            .windows
            .as_ref()
            .expect("the manifest's windows");
        assert_eq!(json.mode.as_deref(), Some("pte"));
        assert_eq!(json.system_time_filetime, recorded.system_time);
        assert_eq!(live.origin.source.kind, "winpmem");
        assert_eq!(live.origin.system_ram, manifest::ranges_json(&map));
        assert_eq!(live.plan.ranges, map);
        // The image's metadata note is the manifest's origin.
        let note: Origin =
            serde_json::from_str(live.plan.metadata_json.as_deref().unwrap()).unwrap();
        assert_eq!(note.windows, live.origin.windows);
    }
}
