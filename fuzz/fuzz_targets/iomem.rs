//! The /proc/iomem parser and the RAM map drawn from it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(iomem) = pmem_sources::iomem::parse(text) {
        let ram = iomem.system_ram();
        let _ = (
            ram.total_bytes(),
            iomem.is_all_zero(),
            iomem.find("Kernel code"),
        );
    }
});
