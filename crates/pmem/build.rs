//! Embeds a WinPmem driver into pmem.exe when PMEM_EMBED_DRIVER names a
//! driver file at build time (organisations with their own signed build):
//!     PMEM_EMBED_DRIVER=C:\drivers\winpmem_x64.sys cargo build --release
//! `pmem driver extract PATH` writes it out; `acquire` and `driver load`
//! use it when no --driver is given. Without the variable an empty file is
//! embedded, which means "none".

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=PMEM_EMBED_DRIVER");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = out.join("embedded-driver.sys");
    match std::env::var_os("PMEM_EMBED_DRIVER") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("PMEM_EMBED_DRIVER={}: {e}", path.display());
            });
            // A PE image starts with "MZ"; anything else is a mistake.
            assert!(
                bytes.starts_with(b"MZ"),
                "PMEM_EMBED_DRIVER={} is not a Windows driver (no MZ header)",
                path.display()
            );
            std::fs::write(&target, bytes).expect("writing the embedded driver");
        }
        _ => std::fs::write(&target, []).expect("writing the empty driver placeholder"),
    }
}
