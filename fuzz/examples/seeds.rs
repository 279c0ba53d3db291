//! Writes the seed corpus of the fuzz targets (fuzz/seeds/TARGET/) with
//! pmem's own writers: small real images of every format, a .zst of a LiME
//! image, an iomem listing and a kcore-shaped ELF core. Run from fuzz/:
//! `cargo run --example seeds` (after a change to a writer's output).

use pmem_core::sink::{create_image_file, HashingSink};
use pmem_core::{Arch, ByteSink, Chunk, MemoryMap, Plan, Range, WindowsMetadata};
use pmem_formats::Format;
use std::path::Path;

/// Three pages of RAM in two ranges, with text and zero pages: AVML and
/// AFF4 compress the text, leave the zero page out or map it as zeros.
/// Every piece of metadata a format carries is there, a symbol bundle too.
fn plan() -> Plan {
    let ranges = MemoryMap::new(vec![
        Range::new(0x1000, 0x3000).unwrap(),
        Range::new(0x10_0000, 0x10_1000).unwrap(),
    ])
    .unwrap();
    let mut plan = Plan::new(ranges, Arch::X86_64);
    plan.vmcoreinfo = Some(b"OSRELEASE=6.1.0\nPAGESIZE=4096\n".to_vec());
    plan.metadata_json = Some(r#"{"tool":"pmem"}"#.into());
    plan.direct_map_offset = Some(0xffff_8880_0000_0000);
    // Small: the formats carry it as opaque bytes whatever its size.
    plan.symbols = Some(b"a symbol bundle: BTF, kallsyms, banner\n".to_vec());
    plan.windows = Some(WindowsMetadata {
        cr3: 0x1aa000,
        nt_build_number: 0xF000_4A61,
        processors: 1,
        ..Default::default()
    });
    plan
}

fn page(i: u64) -> Vec<u8> {
    if i == 1 {
        return vec![0; 4096];
    }
    (0..4096u32)
        .map(|b| b"physical memory "[(b % 16) as usize] ^ i as u8)
        .collect()
}

fn write(format: Format, sink: Box<dyn ByteSink>) {
    let plan = plan();
    let mut writer = pmem_formats::writer(format, sink);
    writer.begin(&plan).unwrap();
    let mut i = 0;
    for range in plan.ranges.ranges() {
        for addr in (range.start..range.end).step_by(4096) {
            let data = page(i);
            if data.iter().all(|&b| b == 0) {
                writer.write_chunk(addr, Chunk::Zero(4096)).unwrap();
            } else {
                writer.write_chunk(addr, Chunk::Data(&data)).unwrap();
            }
            i += 1;
        }
    }
    writer.finish().unwrap();
}

fn sink(path: &Path) -> Box<HashingSink> {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    Box::new(HashingSink::file(create_image_file(path, false).unwrap()))
}

/// `data` as zstd frames of 4 KiB, each with an 8-byte content size and
/// one raw (stored) block.
fn sized_frames(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.chunks(4096) {
        out.extend_from_slice(&pmem_formats::zstd::MAGIC);
        out.push(0xe0); // single segment, 8-byte content size
        out.extend_from_slice(&(piece.len() as u64).to_le_bytes());
        let block = 1 | (piece.len() as u32) << 3; // last, raw
        out.extend_from_slice(&block.to_le_bytes()[..3]);
        out.extend_from_slice(piece);
    }
    out
}

const IOMEM: &str = "\
00000000-00000fff : Reserved
00001000-00002fff : System RAM
00003000-000fffff : Reserved
00100000-00100fff : System RAM
  00100000-00100fff : Kernel code
fd000000-fdffffff : PCI Bus 0000:00
  fd000000-fdffffff : 0000:00:01.0
";

fn main() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    // Not raw: its smallest image is 1 MiB of mostly zeros, and any bytes
    // are a raw image (the image target makes its own).
    for format in Format::ALL.into_iter().filter(|&f| f != Format::Raw) {
        let name = format.name();
        write(format, sink(&seeds.join(name).join(name)));
        write(format, sink(&seeds.join("image").join(name)));
    }
    let zst = seeds.join("zstd").join("lime.zst");
    write(
        Format::Lime,
        Box::new(pmem_formats::zstd::ZstdSink::new(sink(&zst))),
    );
    // As `zstd` itself writes: no seek table, each frame's content size
    // in its header (the reader walks the frames and sums those sizes).
    let lime = std::fs::read(seeds.join("lime").join("lime")).unwrap();
    std::fs::write(
        seeds.join("zstd").join("lime-sized-frames.zst"),
        sized_frames(&lime),
    )
    .unwrap();
    std::fs::create_dir_all(seeds.join("iomem")).unwrap();
    std::fs::write(seeds.join("iomem").join("qemu"), IOMEM).unwrap();
    // kcore: an ELF core (PT_LOADs at physical addresses, a VMCOREINFO
    // note), alone and after an iomem listing and a NUL.
    let elf = std::fs::read(seeds.join("elf").join("elf")).unwrap();
    std::fs::create_dir_all(seeds.join("kcore")).unwrap();
    std::fs::write(seeds.join("kcore").join("core"), &elf).unwrap();
    let mut with_ram = IOMEM.as_bytes().to_vec();
    with_ram.push(0);
    with_ram.extend_from_slice(&elf);
    std::fs::write(seeds.join("kcore").join("iomem-core"), with_ram).unwrap();
}
