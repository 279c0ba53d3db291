//! What every image-reader fuzz target does with the reader it opened:
//! asks it everything it can say and reads a little of each range, so that
//! the read path (chunk indexes, decompression) is fuzzed too, not only
//! the header parsing.

use pmem_formats::{FormatError, ImageFile, ImageReader};
use std::io::Cursor;
use std::path::Path;

/// The name errors give the input.
pub const PATH: &str = "fuzz-input";

/// The input as an image file held in memory.
pub fn image_file(data: &[u8]) -> ImageFile {
    ImageFile::stream(Cursor::new(data.to_vec())).expect("seeking a Cursor")
}

/// Opens the input with `open` (one reader's `open`), then exercises the
/// reader. Errors are the expected outcome of most inputs; panics, hangs,
/// huge allocations and overflows are the bugs.
pub fn open_and_read<R: ImageReader>(
    data: &[u8],
    open: impl FnOnce(&Path, ImageFile) -> Result<R, FormatError>,
) {
    if let Ok(mut reader) = open(Path::new(PATH), image_file(data)) {
        exercise(&mut reader);
    }
}

/// Bytes read at the start and at the end of each range: enough to reach
/// every chunk/frame lookup of a small image, bounded for ranges that claim
/// terabytes.
const READ: u64 = 64 << 10;

pub fn exercise(reader: &mut dyn ImageReader) {
    let metadata = reader.metadata();
    let _ = (
        reader.format(),
        metadata.arch,
        metadata.metadata_json.as_deref().map(str::len),
        metadata.vmcoreinfo.as_deref().map(<[u8]>::len),
        metadata.symbols.as_deref().map(<[u8]>::len),
        metadata.direct_map_offset,
        metadata.windows.as_ref(),
        metadata.unreadable.len(),
    );
    let ranges = reader.memory_map().ranges().to_vec();
    let mut buf = vec![0u8; READ as usize];
    for range in ranges.iter().take(64) {
        let head = range.len().min(READ);
        let _ = reader.read_at(range.start, &mut buf[..head as usize]);
        let tail_start = range.end - head;
        if tail_start > range.start {
            let _ = reader.read_at(tail_start, &mut buf[..head as usize]);
        }
    }
}
