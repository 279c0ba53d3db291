use super::frame::*;
use super::*;
use crate::test_util::map;
use crate::FormatError;
use pmem_core::sink::HashingSink;
use pmem_core::{
    Arch, ByteSink, Chunk, ImageWriter, MemoryMap, PhysicalMemory, Plan, SinkSummary, WriteError,
};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Deterministic incompressible bytes.
fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Compressible, never all zero.
fn text(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b"memory acquisition "[i % 19] ^ salt)
        .collect()
}

/// Writes `content` (one Vec per range) as AVML, returning the file or
/// the writer's error.
fn write(
    ranges: &MemoryMap,
    content: &[Vec<u8>],
) -> (tempfile::TempDir, PathBuf, Result<SinkSummary, WriteError>) {
    write_with(ranges, content, true, 2)
}

/// `direct`: a readable file (blocks streamed, headers patched) or a
/// write-only one (blocks buffered, as on a pipe).
fn write_with(
    ranges: &MemoryMap,
    content: &[Vec<u8>],
    direct: bool,
    threads: usize,
) -> (tempfile::TempDir, PathBuf, Result<SinkSummary, WriteError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.avml");
    let file = if direct {
        pmem_core::sink::create_image_file(&path, false).unwrap()
    } else {
        File::create(&path).unwrap()
    };
    let mut sink = Box::new(HashingSink::file(file));
    assert_eq!(sink.patcher().is_some(), direct);
    let mut w: Box<dyn ImageWriter> = Box::new(AvmlWriter::with_threads(sink, threads));
    let result = (|| {
        w.begin(&Plan::new(ranges.clone(), Arch::X86_64))?;
        for (range, data) in ranges.ranges().iter().zip(content) {
            // Feed in uneven pieces, zero pages as Zero chunks.
            let mut at = 0usize;
            while at < data.len() {
                let n = (data.len() - at).min(12288 + at % 7 * 4096);
                let piece = &data[at..at + n];
                let addr = range.start + at as u64;
                if piece.iter().all(|&b| b == 0) {
                    w.write_chunk(addr, Chunk::Zero(n as u64))?;
                } else {
                    w.write_chunk(addr, Chunk::Data(piece))?;
                }
                at += n;
            }
        }
        w.finish()
    })();
    (dir, path, result)
}

/// Parses the file independently of the reader: every block's stream
/// must be shorter than its block (Volatility's condition).
fn block_shapes(bytes: &[u8]) -> Vec<(u64, u64, u64)> {
    let mut shapes = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let start = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        let last = u64::from_le_bytes(bytes[at + 16..at + 24].try_into().unwrap());
        let mut off = at + 32;
        assert_eq!(&bytes[off..off + 10], &STREAM_ID);
        off += 10;
        let mut decoded = 0u64;
        while decoded < last - start + 1 {
            let len =
                u32::from_le_bytes([bytes[off + 1], bytes[off + 2], bytes[off + 3], 0]) as usize;
            let body = &bytes[off + 8..off + 4 + len];
            decoded += match bytes[off] {
                0 => snap::raw::decompress_len(body).unwrap() as u64,
                1 => body.len() as u64,
                t => panic!("chunk type {t}"),
            };
            off += 4 + len;
        }
        let stream = (off - at - 32) as u64;
        assert_eq!(
            u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap()),
            stream
        );
        let block = last - start + 1;
        assert!(
            stream < block,
            "block {start:#x}: stream {stream} >= block {block}"
        );
        assert!(block <= CAP);
        shapes.push((start, block, stream));
        at = off + 8;
    }
    shapes
}

fn read_all(path: &Path) -> AvmlReader {
    AvmlReader::open(path, File::open(path).unwrap()).unwrap()
}

#[test]
fn round_trip_mixed_with_zero_gaps() {
    let mut a = text(3 << 20, 1);
    a.extend(vec![0u8; 1 << 20]); // written as compressed zero frames
    a.extend(random(7, 5 << 20)); // needs donors on both sides
    a.extend(text(3 << 20, 2));
    let b = random(9, 3 << 19);
    let mut b2 = text(1 << 20, 3);
    b2.extend(b);
    b2.extend(text(100_000, 4));
    let ranges = map(&[
        (0x10_0000, 0x10_0000 + a.len() as u64),
        (1 << 32, (1 << 32) + b2.len() as u64),
    ]);
    let (_dir, path, result) = write(&ranges, &[a.clone(), b2.clone()]);
    let summary = result.unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(summary.bytes, bytes.len() as u64);
    block_shapes(&bytes);
    let mut r = read_all(&path);
    // The zero MiB is in the image too: no gaps inside a range.
    assert_eq!(r.memory_map(), &ranges);
    for (range, data) in ranges.ranges().iter().zip([&a, &b2]) {
        for piece in r
            .memory_map()
            .intersect(&MemoryMap::new(vec![*range]).unwrap())
            .ranges()
            .to_vec()
        {
            let mut buf = vec![0u8; piece.len() as usize];
            r.read_at(piece.start, &mut buf).unwrap();
            let off = (piece.start - range.start) as usize;
            assert!(buf == data[off..off + buf.len()], "range {piece}");
        }
    }
    // Random access backwards and inside chunks.
    let mut one = [0u8; 3];
    r.read_at(0x10_0000 + 70_000, &mut one).unwrap();
    assert_eq!(one[..], a[70_000..70_003]);
    r.read_at(0x10_0000 + 5, &mut one).unwrap();
    assert_eq!(one[..], a[5..8]);
}

#[test]
fn every_range_is_written_whole_zeros_included() {
    // Zeros at both ends of a range, inside it, and a range of zeros
    // only (with a partial last frame): the blocks cover both ranges
    // exactly, so no read of a listed address falls into a gap.
    let mut a = vec![0u8; 3 * FRAME];
    a.extend(text(2 * FRAME, 1));
    a.extend(vec![0u8; 4 * FRAME]);
    a.extend(text(FRAME, 2));
    a.extend(vec![0u8; 3 * FRAME]);
    let b = vec![0u8; 5 * FRAME + 4096];
    let ranges = map(&[
        (0x10_0000, 0x10_0000 + a.len() as u64),
        (1 << 32, (1 << 32) + b.len() as u64),
    ]);
    let (_dir, path, result) = write(&ranges, &[a.clone(), b.clone()]);
    result.unwrap();
    let mut r = read_all(&path);
    assert_eq!(r.memory_map(), &ranges);
    check_content(&path, &ranges, &[a, b]);
    let mut page = vec![1u8; 4096];
    r.read_at((1 << 32) + 5 * FRAME as u64, &mut page).unwrap();
    assert!(page.iter().all(|&x| x == 0));
}

#[test]
fn incompressible_stretch_is_refused_not_written() {
    let data = random(3, 40 << 20);
    let ranges = map(&[(0, data.len() as u64)]);
    let content = [data];
    let (_dir, _path, result) = write(&ranges, &content);
    assert!(
        matches!(result, Err(WriteError::Unrepresentable { .. })),
        "{result:?}"
    );
    // Buffered (stream) blocks: whatever was written before the error
    // holds no bad block. (On a file the unfinished block is left behind
    // a provisional header; the CLI starts the file again.)
    let (_dir, path, result) = write_with(&ranges, &content, false, 1);
    assert!(matches!(result, Err(WriteError::Unrepresentable { .. })));
    block_shapes(&std::fs::read(&path).unwrap());
}

#[test]
fn short_incompressible_range_is_refused() {
    let data = random(5, 8192);
    let ranges = map(&[(0, 8192)]);
    let (_dir, _path, result) = write(&ranges, &[data]);
    assert!(matches!(result, Err(WriteError::Unrepresentable { .. })));
}

#[test]
fn incompressible_after_zero_borrows_the_zero_frame() {
    let mut data = vec![0u8; 1 << 20];
    data.extend(random(11, 6 << 20));
    data.extend(vec![0u8; 1 << 20]);
    let ranges = map(&[(0, data.len() as u64)]);
    let (_dir, path, result) = write(&ranges, &[data.clone()]);
    result.unwrap();
    let shapes = block_shapes(&std::fs::read(&path).unwrap());
    let mut r = read_all(&path);
    for range in r.memory_map().ranges().to_vec() {
        let mut buf = vec![0u8; range.len() as usize];
        r.read_at(range.start, &mut buf).unwrap();
        assert!(buf == data[range.start as usize..range.end as usize]);
    }
    assert!(shapes.len() <= 3, "{shapes:?}");
}

fn check_content(path: &Path, ranges: &MemoryMap, content: &[Vec<u8>]) {
    let mut r = read_all(path);
    for (range, data) in ranges.ranges().iter().zip(content) {
        for piece in r
            .memory_map()
            .intersect(&MemoryMap::new(vec![*range]).unwrap())
            .ranges()
            .to_vec()
        {
            let mut buf = vec![0u8; piece.len() as usize];
            r.read_at(piece.start, &mut buf).unwrap();
            let off = (piece.start - range.start) as usize;
            assert!(buf == data[off..off + buf.len()], "range {piece}");
        }
    }
}

#[test]
fn incompressible_stretch_grows_a_block_past_16_mib_on_a_file() {
    let mut data = text(3 << 20, 1);
    data.extend(random(21, 40 << 20));
    data.extend(text(1 << 20, 2));
    let ranges = map(&[(0, data.len() as u64)]);
    let content = [data];
    let (_dir, path, result) = write(&ranges, &content);
    let summary = result.unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // The hash covers the patched headers: as a plain stream of the bytes.
    let mut again = Box::new(HashingSink::stream(Box::new(io::sink())));
    again.write_all(&bytes).unwrap();
    assert_eq!(summary, again.finish().unwrap());
    let shapes = block_shapes(&bytes);
    assert!(shapes.iter().any(|s| s.1 > MAX_BLOCK), "{shapes:?}");
    check_content(&path, &ranges, &content);
    // On a stream the block cannot grow that far: refused early.
    let (_dir, path, result) = write_with(&ranges, &content, false, 1);
    match result {
        Err(WriteError::Unrepresentable { reason, .. }) => {
            assert!(reason.contains("write to a file"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    block_shapes(&std::fs::read(&path).unwrap());
}

#[test]
fn output_is_the_same_whatever_the_threads() {
    let mut data = text(5 << 20, 3);
    data.extend(vec![0u8; 3 << 20]);
    data.extend(random(5, 2 << 20));
    data.extend(text(70_000, 4));
    let ranges = map(&[(0x1000, 0x1000 + data.len() as u64)]);
    let content = [data];
    let (_d0, p0, r0) = write_with(&ranges, &content, true, 0);
    let (_d3, p3, r3) = write_with(&ranges, &content, true, 3);
    assert_eq!(r0.unwrap(), r3.unwrap());
    assert!(std::fs::read(&p0).unwrap() == std::fs::read(&p3).unwrap());
    check_content(&p0, &ranges, &content);
    // Buffered (stream) mode: smaller blocks, same memory.
    let (_ds, ps, rs) = write_with(&ranges, &content, false, 2);
    rs.unwrap();
    block_shapes(&std::fs::read(&ps).unwrap());
    check_content(&ps, &ranges, &content);
}

fn small_image() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let mut data = text(300_000, 1);
    data.extend(random(1, 100_000));
    let ranges = map(&[(0x1000, 0x1000 + data.len() as u64)]);
    let (dir, path, result) = write(&ranges, &[data]);
    result.unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (dir, path, bytes)
}

fn reopen(path: &Path, bytes: &[u8]) -> Result<AvmlReader, FormatError> {
    std::fs::write(path, bytes).unwrap();
    AvmlReader::open(path, File::open(path).unwrap())
}

#[test]
fn corrupt_chunks_are_named_by_offset() {
    let (_dir, path, bytes) = small_image();
    // A flipped data byte: the chunk's CRC catches it on read.
    let mut bad = bytes.clone();
    let first_chunk = 32 + 10;
    bad[first_chunk + 20] ^= 0x55;
    let mut r = reopen(&path, &bad).unwrap();
    let mut buf = vec![0u8; 400_000];
    let err = r.read_at(0x1000, &mut buf).unwrap_err().to_string();
    assert!(
        err.contains(&format!("file offset {first_chunk:#x}")),
        "{err}"
    );
    // A chunk length past the end of the file.
    let mut bad = bytes.clone();
    bad[first_chunk + 3] = 0x7f;
    let err = reopen(&path, &bad).unwrap_err();
    assert_eq!(err.offset(), first_chunk as u64);
    // Truncation anywhere is an error, never a panic.
    for cut in [
        1,
        31,
        33,
        45,
        bytes.len() / 2,
        bytes.len() - 8,
        bytes.len() - 1,
    ] {
        assert!(reopen(&path, &bytes[..cut]).is_err(), "cut at {cut}");
    }
    // A wrong stream length.
    let mut bad = bytes.clone();
    let n = bad.len();
    bad[n - 8] ^= 1;
    assert!(reopen(&path, &bad)
        .unwrap_err()
        .to_string()
        .contains("stream length"));
    // A huge compressed-length preamble is refused before allocating.
    let mut bad = bytes.clone();
    assert_eq!(bad[first_chunk], 0);
    bad[first_chunk + 8..first_chunk + 13].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(reopen(&path, &bad).is_err());
    // Every single-byte change in the headers fails cleanly or reads.
    for i in 0..60 {
        let mut bad = bytes.clone();
        bad[i] ^= 0xa5;
        if let Ok(mut r) = reopen(&path, &bad) {
            let ranges = r.memory_map().ranges().to_vec();
            for range in ranges {
                let mut buf = vec![0u8; range.len().min(1 << 20) as usize];
                let _ = r.read_at(range.start, &mut buf);
            }
        }
    }
}
