//! The info parser against samples in the kext's layout, the choice of
//! ranges, and the source over an in-memory device.

use super::*;

const SAMPLE: &str = include_str!("samples/macpmem-10.10-intel.yaml");
const README_SAMPLE: &str = include_str!("samples/macpmem-readme.yaml");

fn map(r: &[(u64, u64)]) -> MemoryMap {
    MemoryMap::new(r.iter().map(|&(s, e)| Range::new(s, e).unwrap()).collect()).unwrap()
}

#[test]
fn parses_the_sample() {
    let info = PmemInfo::parse(SAMPLE).unwrap();
    assert_eq!(info.api_version, 2);
    assert_eq!(info.cr3, 5773611222);
    assert_eq!(info.dtb, 5773611008);
    assert_eq!(info.kaslr_slide, 304087040);
    assert_eq!(info.kernel_poffset, 305135616);
    assert_eq!(info.phys_mem_size, 16 << 30);
    assert_eq!(info.mmap_desc_size, 48);
    assert!(info
        .kernel_version
        .starts_with("Darwin Kernel Version 14.4.0"));
    assert!(info.kernel_version.ends_with("RELEASE_X86_64"));
    assert_eq!(info.records.len(), 11);
    let pci = &info.records[0];
    assert_eq!(
        (pci.kind.as_str(), pci.subtype.as_str()),
        ("pci_range", "PCIUnknownMemory")
    );
    assert!(!pci.readable());
    let mmio = &info.records[8];
    assert_eq!(mmio.subtype, "EfiMemoryMappedIO");
    assert_eq!(mmio.purpose, "(EFI) EfiMemoryMappedIO");
    assert!(!mmio.readable());
    assert!(info.other.is_empty());
}

#[test]
fn reads_only_the_efi_types_osxpmem_read() {
    let info = PmemInfo::parse(SAMPLE).unwrap();
    let (memory, not_acquired) = info.memory_map();
    assert_eq!(
        memory,
        map(&[
            // Boot services code + conventional memory, adjacent.
            (0, 0x90000),
            // Conventional + loader data + runtime data, adjacent.
            (0x10_0000, 0x2030_0000),
            (0x8bc0_0000, 0x8bc8_0000),
            (0x1_0000_0000, 0x4_0000_0000),
        ])
    );
    // Reserved, MMIO, unknown types and PCI ranges are left out.
    for addr in [0x90000, 0xe000_0000, 0xf000_0000, 0xc000_0000] {
        assert!(memory.find(addr).is_none(), "{addr:#x}");
    }
    assert!(not_acquired.is_empty());
}

#[test]
fn keeps_unknown_meta_keys() {
    let info = PmemInfo::parse(README_SAMPLE).unwrap();
    assert_eq!(info.other.get("version_poffset").unwrap(), "313959808");
    assert!(info.records.is_empty());
    let err = MacSource::new(
        README_SAMPLE,
        Path::new(INFO_PATH),
        Vec::new(),
        Path::new(DEVICE_PATH),
    )
    .err()
    .unwrap();
    assert!(matches!(err, MacosError::NoMemory { .. }), "{err}");
}

const SMALL: &str = "%YAML 1.2
---
meta:
  pmem_api_version: 2
  cr3: 0x2000
  dtb_off: 8192
  kaslr_slide: 0
  kernel_version: 'Darwin'
records:
  - purpose: \"(EFI) EfiConventionalMemory\"
    type: \"efi_range\"
    efi_type: \"EfiConventionalMemory\"
    start: 4096
    length: 8192
    hw_informant: true
  - purpose: \"(EFI) EfiLoaderData\"
    type: \"efi_range\"
    efi_type: \"EfiLoaderData\"
    start: 20480
    length: 6000
    hw_informant: false
";

#[test]
fn source_reads_the_device_by_physical_address() {
    let device: Vec<u8> = (0..0x10000u32).map(|i| (i / 7) as u8).collect();
    let mut source =
        MacSource::new(SMALL, Path::new("info"), device.clone(), Path::new("dev")).unwrap();
    assert!(source.info.records[0].hw_informant);
    assert_eq!(source.info.cr3, 0x2000);
    assert_eq!(source.info.kernel_version, "Darwin");
    assert_eq!(
        source.memory.memory_map(),
        &map(&[(0x1000, 0x3000), (0x5000, 0x6000)])
    );
    // The unaligned tail of the loader data range is recorded, not read.
    assert_eq!(source.not_acquired.len(), 1);
    assert_eq!(
        source.not_acquired[0].range,
        Range::new(0x6000, 20480 + 6000).unwrap()
    );
    let mut buf = vec![0u8; 0x2000];
    source.memory.read_at(0x1000, &mut buf).unwrap();
    assert_eq!(&buf[..], &device[0x1000..0x3000]);
    // Nothing outside the map is ever read.
    assert!(source.memory.read_at(0x3000, &mut buf[..1]).is_err());
}

#[test]
fn a_short_device_fails_the_probe() {
    let err = MacSource::new(
        SMALL,
        Path::new("info"),
        vec![0u8; 0x1800],
        Path::new("dev"),
    )
    .err()
    .unwrap();
    assert!(matches!(err, MacosError::Probe { .. }), "{err}");
}

#[test]
fn errors_name_the_line() {
    let bad_number = SAMPLE.replace("cr3: 5773611222", "cr3: 57736x");
    let err = PmemInfo::parse(&bad_number).unwrap_err();
    assert_eq!(err.line, 5);
    assert!(err.reason.contains("cr3"), "{err}");
    let missing = SAMPLE.replace("  kaslr_slide: 304087040\n", "");
    let err = PmemInfo::parse(&missing).unwrap_err();
    assert!(err.reason.contains("kaslr_slide"), "{err}");
    let err = PmemInfo::parse("hello world\n").unwrap_err();
    assert_eq!(err.line, 1);
    let err = PmemInfo::parse("").unwrap_err();
    assert!(err.reason.contains("meta"), "{err}");
    let orphan = SMALL.replace(
        "  - purpose: \"(EFI) EfiConventionalMemory\"",
        "    purpose: x",
    );
    let err = PmemInfo::parse(&orphan).unwrap_err();
    assert!(err.reason.contains("first"), "{err}");
    let bad_bool = SMALL.replace("hw_informant: true", "hw_informant: maybe");
    assert_eq!(PmemInfo::parse(&bad_bool).unwrap_err().line, 15);
    let huge = SMALL.replace("start: 20480", "start: 18446744073709551615");
    let (memory, _) = PmemInfo::parse(&huge).unwrap().memory_map();
    assert_eq!(
        memory,
        map(&[(0x1000, 0x3000)]),
        "a range past 2^64 is dropped"
    );
}

#[test]
fn every_prefix_and_mutation_is_handled() {
    for cut in 0..SAMPLE.len() {
        if SAMPLE.is_char_boundary(cut) {
            let _ = PmemInfo::parse(&SAMPLE[..cut]).map(|i| i.memory_map());
        }
    }
    let bytes = SAMPLE.as_bytes();
    for at in (0..bytes.len()).step_by(7) {
        for value in [b' ', b'-', b':', b'"', b'\n', b'9'] {
            let mut m = bytes.to_vec();
            m[at] = value;
            if let Ok(text) = std::str::from_utf8(&m) {
                let _ = PmemInfo::parse(text).map(|i| i.memory_map());
            }
        }
    }
}

#[test]
fn crlf_and_trailing_nul() {
    let text = SMALL.replace('\n', "\r\n") + "\0";
    assert_eq!(
        PmemInfo::parse(&text).unwrap(),
        PmemInfo::parse(SMALL).unwrap()
    );
}
