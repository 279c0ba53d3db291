//! Helpers shared by the format modules' unit tests.

use crate::{Format, ImageReader};
use pmem_core::sink::{create_image_file, HashingSink};
use pmem_core::{Chunk, MemoryMap, Plan, Range};

/// A memory map from half-open (start, end) pairs.
pub(crate) fn map(ranges: &[(u64, u64)]) -> MemoryMap {
    MemoryMap::new(
        ranges
            .iter()
            .map(|&(s, e)| Range::new(s, e).unwrap())
            .collect(),
    )
    .unwrap()
}

/// The bytes of a `format` image of `plan`, range i filled with 0x11 * (i + 1).
pub(crate) fn write_image(format: Format, plan: &Plan) -> Vec<u8> {
    write_image_with_time_map(format, plan, None)
}

/// [`write_image`], handing the writer `time_map` after the last chunk as
/// the copy does.
pub(crate) fn write_image_with_time_map(
    format: Format,
    plan: &Plan,
    time_map: Option<&str>,
) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");
    let sink = HashingSink::file(create_image_file(&path, false).unwrap());
    let mut writer = crate::writer(format, Box::new(sink));
    writer.begin(plan).unwrap();
    for (i, r) in plan.ranges.ranges().iter().enumerate() {
        let data = vec![0x11 * (i as u8 + 1); r.len() as usize];
        writer.write_chunk(r.start, Chunk::Data(&data)).unwrap();
    }
    if let Some(json) = time_map {
        writer.time_map(json).unwrap();
    }
    writer.finish().unwrap();
    std::fs::read(&path).unwrap()
}

/// A symbol bundle for the tests: every byte value (not UTF-8), and a
/// length neither 4 nor 8 divides (note padding).
pub(crate) fn symbol_bundle() -> Vec<u8> {
    (0..=255).chain(0..7).collect()
}

/// Checks that `reader` gives `symbols` as its bundle and still reads the
/// first page of range `index` of a [`write_image`] byte-exact.
pub(crate) fn check_symbols_and_memory(reader: &mut dyn ImageReader, symbols: &[u8], index: u8) {
    assert_eq!(reader.metadata().symbols.as_deref(), Some(symbols));
    let start = reader.memory_map().ranges()[index as usize].start;
    let mut page = [0u8; 0x1000];
    reader.read_at(start, &mut page).unwrap();
    assert_eq!(page, [0x11 * (index + 1); 0x1000]);
}
