//! Zero-padded raw: file offset == physical address. Gaps between ranges
//! and zero chunks are holes on file sinks; the file ends at the last
//! range's end. The file cannot say which parts are memory, so the reader
//! takes a map from the caller (the manifest) or assumes one range.

use crate::{
    check_plan_nonempty, corrupt_in, file_len, finish_sink, write_body, write_zeros, Format,
    FormatError, ImageFile, ImageReader, Segments,
};
use pmem_core::writer::ChunkCursor;
use pmem_core::{
    ByteSink, Chunk, ImageWriter, MemoryMap, PhysicalMemory, Plan, Range, ReadError, SinkSummary,
    WriteError,
};
#[cfg(test)]
use std::fs::File;
use std::path::Path;

pub struct RawWriter {
    sink: Box<dyn ByteSink>,
    cursor: ChunkCursor,
}

impl RawWriter {
    pub fn new(sink: Box<dyn ByteSink>) -> RawWriter {
        RawWriter {
            sink,
            cursor: ChunkCursor::default(),
        }
    }
}

impl ImageWriter for RawWriter {
    fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
        check_plan_nonempty(plan, Format::Raw)?;
        self.cursor = ChunkCursor::new(&plan.ranges);
        Ok(())
    }

    fn write_chunk(&mut self, addr: u64, chunk: Chunk<'_>) -> Result<(), WriteError> {
        self.cursor.advance(addr, chunk.len())?;
        // The cursor guarantees addr >= position: chunks ascend from the
        // first range, and nothing but chunk bytes precedes them.
        let gap = addr - self.sink.position();
        write_zeros(self.sink.as_mut(), gap)?;
        write_body(self.sink.as_mut(), chunk)
    }

    fn finish(self: Box<Self>) -> Result<SinkSummary, WriteError> {
        finish_sink(self.sink, &self.cursor)
    }
}

#[derive(Debug)]
pub struct RawReader {
    segments: Segments,
}

impl RawReader {
    /// `map` says which addresses hold memory; `None` means the whole file
    /// `[0, len)`. Every range must lie inside the file.
    pub fn open(
        path: &Path,
        file: impl Into<ImageFile>,
        map: Option<MemoryMap>,
    ) -> Result<RawReader, FormatError> {
        let file: ImageFile = file.into();
        let len = file_len(path, &file)?;
        let map = match map {
            Some(map) => map,
            None => {
                let whole =
                    Range::new(0, len).ok_or_else(|| FormatError::Empty { path: path.into() })?;
                MemoryMap::new(vec![whole]).expect("a single range is a valid map")
            }
        };
        let corrupt = corrupt_in(path, Format::Raw);
        if map.is_empty() {
            return Err(corrupt(
                0,
                "the memory map given for the raw image is empty".into(),
            ));
        }
        if map.end() > len {
            return Err(corrupt(
                len,
                format!(
                    "the memory map reaches {:#x} but the file ends at {len:#x}: truncated or a different image",
                    map.end()
                ),
            ));
        }
        let offsets = map.ranges().iter().map(|r| r.start).collect();
        Ok(RawReader {
            segments: Segments {
                path: path.into(),
                file,
                map,
                offsets,
            },
        })
    }
}

impl PhysicalMemory for RawReader {
    fn memory_map(&self) -> &MemoryMap {
        &self.segments.map
    }

    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.segments.read_at(addr, buf)
    }
}

impl ImageReader for RawReader {
    fn format(&self) -> Format {
        Format::Raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::map;

    #[test]
    fn map_must_fit_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.raw");
        std::fs::write(&path, [7u8; 0x3000]).unwrap();
        let open = |m| RawReader::open(&path, File::open(&path).unwrap(), m);
        let mut r = open(None).unwrap();
        assert_eq!(r.memory_map(), &map(&[(0, 0x3000)]));
        let mut r2 = open(Some(map(&[(0x1000, 0x2000), (0x2800, 0x3000)]))).unwrap();
        let mut b = [0u8; 4];
        r2.read_at(0x2800, &mut b).unwrap();
        assert_eq!(b, [7; 4]);
        assert!(r2.read_at(0x2400, &mut b).is_err(), "outside the map");
        r.read_at(0x2ffc, &mut b).unwrap();
        let err = open(Some(map(&[(0x1000, 0x3001)]))).unwrap_err();
        assert_eq!(err.offset(), 0x3000);
        assert!(open(Some(MemoryMap::default())).is_err());
    }

    #[test]
    fn empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, []).unwrap();
        let err = RawReader::open(&path, File::open(&path).unwrap(), None).unwrap_err();
        assert!(matches!(err, FormatError::Empty { .. }));
    }
}
