use pmem_core::{Arch, Range};
use pmem_sources::testing::{iomem_text, KcoreBuilder, Segment};
fn main() {
    let dir = std::path::Path::new(&std::env::args().nth(1).unwrap()).to_path_buf();
    let ram = Range::new(0x100000, 0x100000 + (64 << 20)).unwrap();
    KcoreBuilder::new(Arch::X86_64)
        .vmcoreinfo(b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\n")
        .segment(Segment::ram(ram.start, ram.len()))
        .write(&dir.join("kcore"))
        .unwrap();
    std::fs::write(dir.join("iomem"), iomem_text(&[ram])).unwrap();
}
