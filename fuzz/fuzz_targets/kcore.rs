//! /proc/kcore's ELF headers and notes, then the physical mapping of its
//! segments against a System RAM map. The input is an iomem listing, a NUL
//! byte, then the kcore bytes (a kcore alone when there is no NUL).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmem_sources::{iomem, kcore};

fuzz_target!(|data: &[u8]| {
    let (ram, core) = match data.iter().position(|&b| b == 0) {
        Some(nul) => {
            let ram = std::str::from_utf8(&data[..nul])
                .ok()
                .and_then(|t| iomem::parse(t).ok())
                .map(|i| i.system_ram())
                .unwrap_or_default();
            (ram, &data[nul + 1..])
        }
        None => (Default::default(), data),
    };
    if let Ok(header) = kcore::parse(core) {
        let _ = kcore::map_physical(&header.segments, &ram);
    }
});
