//! Inputs that once crashed a reader (found by the fuzz targets in fuzz/,
//! or reported), kept in tests/fuzz-regressions/: each goes the way `pmem
//! info` takes a file (zstd unwrapped, format detected, reader opened, a
//! little of every range read) and must give an error or a reader, never a
//! panic. `cargo test` has overflow checks on, as the fuzz builds do.

use pmem_formats::{open_image_file, unwrap_zstd, ImageFile};
use std::fs::File;
use std::path::Path;

fn exercise(path: &Path) -> Result<(), String> {
    let file: ImageFile = File::open(path).unwrap().into();
    let (file, _) = unwrap_zstd(path, file).map_err(|e| e.to_string())?;
    let mut reader = open_image_file(path, file, None).map_err(|e| e.to_string())?;
    let ranges = reader.memory_map().ranges().to_vec();
    for range in ranges.iter().take(64) {
        let mut buf = vec![0u8; range.len().min(64 << 10) as usize];
        let _ = reader.read_at(range.start, &mut buf);
    }
    Ok(())
}

#[test]
fn every_reproducer_is_handled() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no reproducers in {}", dir.display());
    for path in files {
        let outcome = exercise(&path);
        eprintln!("{}: {outcome:?}", path.display());
    }
}

/// Issue 15, defect 4: frame content sizes adding up past 2^64. Refused
/// naming the frame, not wrapped into a small valid-looking image.
#[test]
fn zstd_frame_sizes_past_2_pow_64_are_refused() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions/zstd-frame-sizes-past-2-pow-64.zst");
    let file: ImageFile = File::open(&path).unwrap().into();
    let err = unwrap_zstd(&path, file).expect_err("refused");
    assert_eq!(err.offset(), 0x11, "{err}");
    let err = err.to_string();
    assert!(err.contains("zstd at file offset 0x11"), "{err}");
    assert!(err.contains("past 2^64"), "{err}");
}
