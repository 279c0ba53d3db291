//! macOS: acquisition through the MacPmem/OSXPMem kext's `/dev/pmem`, with
//! everything its `/dev/pmem_info` says recorded in the manifest's `macos`
//! object (and so in the image's metadata note). The kext is the user's to
//! load; pmem ships none. The parsing lives in pmem_sources::macos.

use pmem_sources::macos::PmemInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `/dev/pmem_info` as the manifest writes it: addresses in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacosJson {
    pub pmem_api_version: u64,
    pub cr3: String,
    /// Directory table base: CR3 without its flag bits.
    pub dtb: String,
    pub kaslr_slide: String,
    pub kernel_version: String,
    pub kernel_poffset: String,
    pub phys_mem_size: u64,
    pub pci_config_space_base: String,
    pub efi_mmap: EfiMmapJson,
    /// Every record of the info device, with whether pmem read it.
    pub records: Vec<RecordJson>,
    /// `meta` keys of other kext versions, as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other: BTreeMap<String, String>,
}

/// Where the boot loader's EFI memory map lies and its descriptor shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EfiMmapJson {
    pub poffset: String,
    pub size: u64,
    pub desc_size: u64,
    pub desc_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordJson {
    pub purpose: String,
    /// efi_range or pci_range.
    #[serde(rename = "type")]
    pub kind: String,
    /// The EFI or PCI type name.
    pub subtype: String,
    pub start: String,
    pub length: String,
    pub hw_informant: bool,
    /// Whether its pages were read (readable EFI types only).
    pub acquired: bool,
}

impl From<&PmemInfo> for MacosJson {
    fn from(info: &PmemInfo) -> Self {
        MacosJson {
            pmem_api_version: info.api_version,
            cr3: format!("{:#x}", info.cr3),
            dtb: format!("{:#x}", info.dtb),
            kaslr_slide: format!("{:#x}", info.kaslr_slide),
            kernel_version: info.kernel_version.clone(),
            kernel_poffset: format!("{:#x}", info.kernel_poffset),
            phys_mem_size: info.phys_mem_size,
            pci_config_space_base: format!("{:#x}", info.pci_config_space_base),
            efi_mmap: EfiMmapJson {
                poffset: format!("{:#x}", info.mmap_poffset),
                size: info.mmap_size,
                desc_size: info.mmap_desc_size,
                desc_version: info.mmap_desc_version,
            },
            records: info
                .records
                .iter()
                .map(|r| RecordJson {
                    purpose: r.purpose.clone(),
                    kind: r.kind.clone(),
                    subtype: r.subtype.clone(),
                    start: format!("{:#x}", r.start),
                    length: format!("{:#x}", r.length),
                    hw_informant: r.hw_informant,
                    acquired: r.readable(),
                })
                .collect(),
            other: info.other.clone(),
        }
    }
}

/// `--source` on macOS: `auto` or `macpmem[:PATH]` (PATH replaces /dev/pmem);
/// `--iomem PATH` replaces /dev/pmem_info.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
fn device_paths(
    source: &str,
    info: Option<&std::path::Path>,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use pmem_sources::macos::{DEVICE_PATH, INFO_PATH};
    let device = match source.split_once(':') {
        Some(("macpmem", path)) if !path.is_empty() => path.into(),
        None if source == "auto" || source == "macpmem" => DEVICE_PATH.into(),
        _ => anyhow::bail!(
            "--source {source}: on macOS the source is auto or macpmem[:PATH] (the MacPmem kext's /dev/pmem)"
        ),
    };
    let info = info.map_or_else(|| INFO_PATH.into(), |p| p.to_path_buf());
    Ok((device, info))
}

/// Opens the kext's devices and describes the acquisition.
#[cfg(target_os = "macos")]
pub fn open_live(
    source: &str,
    info_path: Option<&std::path::Path>,
    started_at: String,
) -> anyhow::Result<crate::acquire::Live> {
    use crate::manifest::{self, NotAcquiredJson, Origin, RangeJson, SourceJson};
    use pmem_core::{Arch, MemoryMap, Plan, Range};
    let (device, info) = device_paths(source, info_path)?;
    let opened = pmem_sources::macos::live::open(&device, &info)?;
    let arch = Arch::host();
    let map = opened.memory.memory_map().clone();
    eprintln!(
        "pmem: reading {} (MacPmem kext) with {} range(s), {:.1} MiB; {}; DTB {:#x}, KASLR slide {:#x}",
        device.display(),
        map.len(),
        map.total_bytes() as f64 / (1 << 20) as f64,
        opened.info.kernel_version,
        opened.info.dtb,
        opened.info.kaslr_slide
    );
    // RAM as the EFI map lists it, before clipping to whole pages.
    let system_ram = MemoryMap::normalized(
        opened
            .info
            .records
            .iter()
            .filter(|r| r.readable())
            .filter_map(|r| r.range())
            .collect::<Vec<Range>>(),
    );
    let origin = Origin {
        pmem_version: env!("CARGO_PKG_VERSION").to_string(),
        host: crate::host::describe(arch),
        source: SourceJson {
            kind: "macpmem".into(),
            path: device.display().to_string(),
            format: None,
            skipped: Vec::new(),
            direct_map_offset: None,
            vmcoreinfo: false,
            module_version: None,
        },
        system_ram: manifest::ranges_json(&system_ram),
        not_acquired: opened
            .not_acquired
            .iter()
            .map(|n| NotAcquiredJson {
                range: RangeJson::from(&n.range),
                reason: n.reason.clone(),
            })
            .collect(),
        started_at,
        windows: None,
        macos: Some(MacosJson::from(&opened.info)),
    };
    let plan = Plan {
        metadata_json: Some(serde_json::to_string(&origin)?),
        ..Plan::new(map, arch)
    };
    Ok(crate::acquire::Live {
        memory: opened.memory,
        origin,
        plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_everything_the_info_device_says() {
        let text = "meta:\n  pmem_api_version: 2\n  cr3: 4099\n  dtb_off: 4096\n  kaslr_slide: 16\n  kernel_version: \"Darwin\"\n  version_poffset: 7\nrecords:\n  - purpose: \"x\"\n    type: \"efi_range\"\n    efi_type: \"EfiConventionalMemory\"\n    start: 4096\n    length: 4096\n    hw_informant: false\n";
        let json = MacosJson::from(&PmemInfo::parse(text).unwrap());
        assert_eq!((json.cr3.as_str(), json.dtb.as_str()), ("0x1003", "0x1000"));
        assert_eq!(json.kaslr_slide, "0x10");
        assert_eq!(json.other["version_poffset"], "7");
        assert!(json.records[0].acquired);
        let text = serde_json::to_string(&json).unwrap();
        assert_eq!(serde_json::from_str::<MacosJson>(&text).unwrap(), json);
    }

    #[test]
    fn source_names() {
        let (d, i) = device_paths("auto", None).unwrap();
        assert_eq!(
            (d.to_str(), i.to_str()),
            (Some("/dev/pmem"), Some("/dev/pmem_info"))
        );
        let (d, _) = device_paths("macpmem:/tmp/x", None).unwrap();
        assert_eq!(d.to_str(), Some("/tmp/x"));
        assert!(device_paths("kcore", None).is_err());
        assert!(device_paths("macpmem:", None).is_err());
    }
}
