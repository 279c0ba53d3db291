//! pmem's AFF4 images read page by page through the `aff4` crate, an AFF4
//! reader written independently of pmem: more than one bevy (32 MiB), a
//! range above 4 GiB, incompressible chunks (stored as they are), a zero run
//! long enough for aff4:Zero, and each chunk compression pmem writes.

use pmem_core::sink::{create_image_file, HashingSink};
use pmem_core::{Arch, Chunk, ImageWriter, MemoryMap, Plan, Range};
use pmem_formats::aff4::{Aff4Writer, Compression, CHUNKS_PER_SEGMENT, CHUNK_SIZE};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

/// Deterministic bytes: `random` ones do not compress, the others are a
/// short repeating pattern with zeroed pages between.
fn content(seed: u64, len: u64, random: bool) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    if random {
        return (0..len).map(|_| next() as u8).collect();
    }
    let mut v: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ seed as u8).collect();
    for page in v.chunks_mut(PAGE as usize) {
        if next() % 4 == 0 {
            page.fill(0);
        }
    }
    v
}

/// Ranges and their bytes: 256 KiB incompressible (chunks stored as they
/// are), 2 MiB of zeros (aff4:Zero), 17.75 MiB compressible; one page at
/// 32 MiB; 16 MiB above 4 GiB. The image stream holds more than 32 MiB, so
/// two bevies. Mostly compressible, since the aff4 crate re-reads a whole
/// bevy for each chunk it reads.
fn two_bevies() -> Vec<(Range, Vec<u8>)> {
    let mut first = content(1, MIB / 4, true);
    first.extend(vec![0u8; (2 * MIB) as usize]);
    first.extend(content(2, 17 * MIB + 3 * MIB / 4, false));
    let mut high = content(3, 16 * MIB - MIB / 4, false);
    high.extend(content(4, MIB / 4, true));
    let ranges = vec![
        (0x1000, first),
        (0x200_0000, content(5, PAGE, true)),
        (0x1_0000_0000, high),
    ];
    ranges
        .into_iter()
        .map(|(start, data)| (Range::new(start, start + data.len() as u64).unwrap(), data))
        .collect()
}

/// Writes `mem` as the pipeline hands it over: 256 KiB pieces, all-zero
/// pieces as `Chunk::Zero`.
fn write(path: &Path, mem: &[(Range, Vec<u8>)], compression: Compression) {
    let map = MemoryMap::new(mem.iter().map(|(r, _)| *r).collect()).unwrap();
    let plan = Plan::new(map, Arch::X86_64);
    let sink = HashingSink::file(create_image_file(path, false).unwrap());
    let mut w: Box<dyn ImageWriter> =
        Box::new(Aff4Writer::with_compression(Box::new(sink), compression));
    w.begin(&plan).unwrap();
    for (range, data) in mem {
        for (i, piece) in data.chunks(256 * 1024).enumerate() {
            let addr = range.start + (i * 256 * 1024) as u64;
            if piece.iter().all(|&b| b == 0) {
                w.write_chunk(addr, Chunk::Zero(piece.len() as u64))
                    .unwrap();
            } else {
                w.write_chunk(addr, Chunk::Data(piece)).unwrap();
            }
        }
    }
    w.finish().unwrap();
}

/// Reads every range through the aff4 crate, one chunk (32 KiB) per read
/// (the most it returns per call: each call re-reads the chunk's whole
/// bevy), and compares every page with the source; the pages either side
/// of each gap read as zeros. Returns the number of pages compared.
fn read_every_page(path: &Path, mem: &[(Range, Vec<u8>)]) -> Result<u64, String> {
    let mut r = aff4::Aff4Reader::open(path).map_err(|e| format!("open: {e}"))?;
    assert_eq!(r.virtual_disk_size(), mem.last().unwrap().0.end);
    let mut read_at = |addr: u64, buf: &mut [u8]| -> Result<(), String> {
        r.seek(SeekFrom::Start(addr))
            .and_then(|_| r.read_exact(buf))
            .map_err(|e| format!("{addr:#x}: {e}"))
    };
    let mut block = vec![0u8; CHUNK_SIZE as usize];
    let mut compared = 0;
    let mut previous_end = 0;
    for (range, data) in mem {
        for hole in [previous_end, range.start - PAGE] {
            if hole >= previous_end && hole < range.start {
                read_at(hole, &mut block[..PAGE as usize])?;
                if block[..PAGE as usize].iter().any(|&b| b != 0) {
                    return Err(format!("hole page {hole:#x} is not zeros"));
                }
            }
        }
        for (i, expected) in data.chunks(CHUNK_SIZE as usize).enumerate() {
            let at = range.start + i as u64 * CHUNK_SIZE;
            let got = &mut block[..expected.len()];
            read_at(at, got)?;
            for (p, (got, expected)) in got
                .chunks(PAGE as usize)
                .zip(expected.chunks(PAGE as usize))
                .enumerate()
            {
                if got != expected {
                    let page = at + p as u64 * PAGE;
                    return Err(format!("page {page:#x} differs from the source"));
                }
                compared += 1;
            }
        }
        previous_end = range.end;
    }
    Ok(compared)
}

/// Snappy, pmem's default chunk compression.
#[test]
fn aff4_crate_reads_every_page_across_two_bevies() {
    let mem = two_bevies();
    let total: u64 = mem.iter().map(|(r, _)| r.len()).sum();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snappy.aff4");
    write(&path, &mem, Compression::Snappy);
    let stored = aff4::Aff4Reader::open(&path).unwrap().image_stream_size();
    assert!(
        stored > CHUNK_SIZE * CHUNKS_PER_SEGMENT,
        "two bevies: {stored}"
    );
    assert_eq!(read_every_page(&path, &mem), Ok(total / PAGE));
}

/// Deflate reads page-exact. LZ4 does not: pmem writes LZ4 blocks, as
/// c-aff4 and pyaff4 do, and aff4 0.2.6 decodes LZ4 frames; it refuses the
/// first compressed chunk (the stored ones before it read). When this
/// fails, the crate has learnt LZ4 blocks: say so in the README.
#[test]
fn aff4_crate_reads_deflate_and_refuses_lz4_blocks() {
    // One bevy: 64 KiB incompressible (two chunks stored as they are), then
    // compressible data; a page above 4 GiB.
    let mut first = content(6, 2 * CHUNK_SIZE, true);
    first.extend(content(7, MIB, false));
    let mem = vec![
        (
            Range::new(0x1000, 0x1000 + first.len() as u64).unwrap(),
            first,
        ),
        (
            Range::new(0x1_0000_0000, 0x1_0000_1000).unwrap(),
            content(8, PAGE, false),
        ),
    ];
    let total: u64 = mem.iter().map(|(r, _)| r.len()).sum();
    let dir = tempfile::tempdir().unwrap();
    let deflate = dir.path().join("deflate.aff4");
    write(&deflate, &mem, Compression::Deflate);
    assert_eq!(read_every_page(&deflate, &mem), Ok(total / PAGE));

    let lz4 = dir.path().join("lz4.aff4");
    write(&lz4, &mem, Compression::Lz4);
    let err = read_every_page(&lz4, &mem).unwrap_err();
    let first_compressed = 0x1000 + 2 * CHUNK_SIZE;
    assert!(
        err.starts_with(&format!("{first_compressed:#x}: ")) && err.contains("lz4 decode"),
        "{err}"
    );
    // pmem's own reader reads it.
    let mut own = pmem_formats::open_image(&lz4, None).unwrap();
    for (range, data) in &mem {
        let mut buf = vec![0u8; data.len()];
        own.read_at(range.start, &mut buf).unwrap();
        assert!(&buf == data, "pmem reader at {range}");
    }
}
