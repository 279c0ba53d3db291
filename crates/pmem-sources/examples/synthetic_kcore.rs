//! Writes a synthetic machine to measure pmem on a host without
//! /proc/kcore: `DIR/kcore` (one System RAM range of MIB MiB at 1 MiB,
//! filled with the tests' pattern) and its `DIR/iomem`.
//!
//!   cargo run -p pmem-sources --features testing --example synthetic_kcore -- DIR [MIB]
//!   pmem acquire --source kcore:DIR/kcore --iomem DIR/iomem OUT
//!
//! docs/benchmarks.md measures peak memory this way (the symbols pmem
//! captures are the host's own).

use pmem_core::{Arch, Range};
use pmem_sources::testing::{iomem_text, KcoreBuilder, Segment};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: synthetic_kcore DIR [MIB]")?);
    let mib: u64 = args.next().map_or(Ok(64), |m| m.parse())?;
    let ram = Range::new(1 << 20, (1 << 20) + (mib << 20)).ok_or("MIB must be at least 1")?;
    std::fs::create_dir_all(&dir)?;
    KcoreBuilder::new(Arch::X86_64)
        .vmcoreinfo(b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\n")
        .segment(Segment::ram(ram.start, ram.len()))
        .write(&dir.join("kcore"))?;
    std::fs::write(dir.join("iomem"), iomem_text(&[ram]))?;
    Ok(())
}
