//! Zero-padded raw: file offset == physical address. Gaps between ranges
//! and zero chunks are holes on file sinks; the file ends at the last
//! range's end. The file cannot say which parts are memory, so the reader
//! takes a map from the caller (the manifest) or assumes one range.

use crate::image_file::Parsing;
use crate::reader::{mapped_file_reader, MappedFile};
use crate::write::{check_plan_nonempty, finish_sink, write_body, write_zeros};
use crate::{Format, FormatError, ImageFile, ImageMetadata};
use pmem_core::writer::ChunkCursor;
use pmem_core::{
    ByteSink, Chunk, FileMap, FilePiece, ImageWriter, MemoryMap, Plan, Range, SinkSummary,
    WriteError,
};
#[cfg(test)]
use std::fs::File;
use std::path::Path;

/// Writes a zero-padded raw image: each range's bytes at the file offset
/// equal to its address, zeros (holes) before and between.
pub struct RawWriter {
    sink: Box<dyn ByteSink>,
    cursor: ChunkCursor,
}

impl RawWriter {
    /// A writer sending the image to `sink`.
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

/// A raw file opened for reading, with the map of where its memory is.
#[derive(Debug)]
pub struct RawReader {
    mapped: MappedFile,
    metadata: ImageMetadata,
}

mapped_file_reader!(RawReader, Format::Raw);

impl RawReader {
    /// `map` says which addresses hold memory; `None` means the whole file
    /// `[0, len)`. Every range must lie inside the file.
    pub fn open(
        path: &Path,
        file: impl Into<ImageFile>,
        map: Option<MemoryMap>,
    ) -> Result<RawReader, FormatError> {
        let file: ImageFile = file.into();
        let image = Parsing::new(path, &file, Format::Raw)?;
        let len = image.len;
        let map = match map {
            Some(map) => map,
            None => {
                let whole =
                    Range::new(0, len).ok_or_else(|| FormatError::Empty { path: path.into() })?;
                MemoryMap::new(vec![whole]).expect("a single range is a valid map")
            }
        };
        if map.is_empty() {
            return Err(image.corrupt(0, "the memory map given for the raw image is empty"));
        }
        if map.end() > len {
            return Err(image.corrupt(
                len,
                format!(
                    "the memory map reaches {:#x} but the file ends at {len:#x}: truncated or a different image",
                    map.end()
                ),
            ));
        }
        // The file offset of every byte is its address.
        let pieces = map
            .ranges()
            .iter()
            .map(|&phys| FilePiece {
                phys,
                file_offset: phys.start,
            })
            .collect();
        let map = FileMap::new(pieces).map_err(|e| image.corrupt(0, e.to_string()))?;
        Ok(RawReader {
            mapped: MappedFile::new(path, file, map),
            metadata: ImageMetadata::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::map;
    use pmem_core::PhysicalMemory;

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
