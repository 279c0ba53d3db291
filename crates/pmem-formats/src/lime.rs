//! LiME v1: for each range a 32-byte header — u32 magic 0x4C694D45 ("EMiL"
//! on disk), u32 version 1, u64 start, u64 end (inclusive), u64 reserved 0 —
//! followed by the range's bytes. Records are in ascending address order,
//! which Volatility's LiME layer relies on.

use crate::bytes::{u32_le, u64_le};
use crate::error::avml_unsupported;
use crate::image_file::{read_exact_at, Parsing};
use crate::reader::{mapped_file_reader, MappedFile};
use crate::write::{check_plan_nonempty, finish_sink, write_all, write_body};
use crate::{Format, FormatError, ImageFile, ImageMetadata};
use pmem_core::writer::ChunkCursor;
use pmem_core::{
    ByteSink, Chunk, FileMap, FilePiece, ImageWriter, MemoryMap, Plan, Range, SinkSummary,
    WriteError,
};
#[cfg(test)]
use std::fs::File;
use std::path::Path;

/// The record header's magic, "LiME" as a little-endian u32 (so "EMiL"
/// in file order).
pub const MAGIC: u32 = 0x4C69_4D45;
/// The only LiME header version there is.
pub const VERSION: u32 = 1;
/// Bytes of a record header.
pub const HEADER_LEN: u64 = 32;
/// AVML's compressed records reuse the header shape with this magic
/// ("AVML" on disk; [`crate::avml::MAGIC`] is this one).
pub const AVML_MAGIC: u32 = 0x4C4D_5641;

/// The record header for `range`.
pub fn header(range: Range) -> [u8; HEADER_LEN as usize] {
    header_for(MAGIC, VERSION, range)
}

/// A record header of the shape LiME and AVML share (AVML writes its own
/// magic and version 2): magic, version, start, inclusive end, reserved.
pub fn header_for(magic: u32, version: u32, range: Range) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(&magic.to_le_bytes());
    h[4..8].copy_from_slice(&version.to_le_bytes());
    h[8..16].copy_from_slice(&range.start.to_le_bytes());
    h[16..24].copy_from_slice(&range.last().to_le_bytes());
    // Bytes 24..32 are LiME's reserved field, zero.
    h
}

/// The fields of a LiME-style record header, as read (not yet checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// [`MAGIC`] or [`AVML_MAGIC`] in a valid header.
    pub magic: u32,
    /// [`VERSION`] for LiME, [`avml::VERSION`](crate::avml::VERSION) for AVML.
    pub version: u32,
    /// First physical address of the record.
    pub start: u64,
    /// The inclusive end.
    pub last: u64,
}

impl RecordHeader {
    /// Splits a header into its fields.
    pub fn parse(h: &[u8; HEADER_LEN as usize]) -> RecordHeader {
        RecordHeader {
            magic: u32_le(h, 0),
            version: u32_le(h, 4),
            start: u64_le(h, 8),
            last: u64_le(h, 16),
        }
    }
}

impl RecordHeader {
    /// The range of a header whose magic is right, once its version is
    /// `version`. `noun` names the record in errors: "record" (LiME) or
    /// "block" (AVML).
    pub(crate) fn checked_range(
        &self,
        image: Parsing<'_>,
        offset: u64,
        version: u32,
        noun: &str,
    ) -> Result<Range, FormatError> {
        let RecordHeader { start, last, .. } = *self;
        if self.version != version {
            return Err(image.corrupt(
                offset,
                format!(
                    "{noun} version {}, only version {version} is supported",
                    self.version
                ),
            ));
        }
        Range::from_inclusive(start, last).ok_or_else(|| {
            image.corrupt(
                offset,
                format!(
                    "{noun} range {start:#x}-{last:#x} (inclusive end) is reversed or ends at 2^64"
                ),
            )
        })
    }
}

/// Refuses a record (`noun`, as for [`RecordHeader::checked_range`]) that
/// does not ascend from the `previous` one: readers of both formats rely
/// on ascending records.
pub(crate) fn check_ascends(
    image: Parsing<'_>,
    offset: u64,
    noun: &str,
    range: Range,
    previous: Option<Range>,
) -> Result<(), FormatError> {
    match previous {
        Some(previous) if range.start < previous.end => Err(image.corrupt(
            offset,
            format!("{noun} {range} overlaps or precedes the previous {noun} {previous}: {noun}s must ascend"),
        )),
        _ => Ok(()),
    }
}

/// Reads the record header at `offset` (the caller has checked that the
/// file holds [`HEADER_LEN`] bytes there).
pub(crate) fn read_record_header(
    path: &Path,
    file: &ImageFile,
    offset: u64,
) -> Result<RecordHeader, FormatError> {
    let mut h = [0u8; HEADER_LEN as usize];
    read_exact_at(path, file, offset, &mut h)?;
    Ok(RecordHeader::parse(&h))
}

/// Writes one LiME record per planned range.
pub struct LimeWriter {
    sink: Box<dyn ByteSink>,
    ranges: MemoryMap,
    cursor: ChunkCursor,
}

impl LimeWriter {
    /// A writer sending the image to `sink`.
    pub fn new(sink: Box<dyn ByteSink>) -> LimeWriter {
        LimeWriter {
            sink,
            ranges: MemoryMap::default(),
            cursor: ChunkCursor::default(),
        }
    }
}

impl ImageWriter for LimeWriter {
    fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
        check_plan_nonempty(plan, Format::Lime)?;
        self.ranges = plan.ranges.clone();
        self.cursor = ChunkCursor::new(&plan.ranges);
        Ok(())
    }

    fn write_chunk(&mut self, addr: u64, chunk: Chunk<'_>) -> Result<(), WriteError> {
        let position = self.cursor.advance(addr, chunk.len())?;
        if position.starts_range {
            let range = self.ranges.ranges()[position.range_index];
            write_all(self.sink.as_mut(), &header(range))?;
        }
        write_body(self.sink.as_mut(), chunk)
    }

    fn finish(self: Box<Self>) -> Result<SinkSummary, WriteError> {
        finish_sink(self.sink, &self.cursor)
    }
}

/// A LiME file opened for reading.
#[derive(Debug)]
pub struct LimeReader {
    mapped: MappedFile,
    metadata: ImageMetadata,
}

mapped_file_reader!(LimeReader, Format::Lime);

impl LimeReader {
    /// Walks the record headers (seeking over the data) and checks that
    /// they describe ascending, disjoint ranges that fit in the file.
    pub fn open(path: &Path, file: impl Into<ImageFile>) -> Result<LimeReader, FormatError> {
        let file: ImageFile = file.into();
        let image = Parsing::new(path, &file, Format::Lime)?.nonempty()?;
        let len = image.len;
        let mut pieces: Vec<FilePiece> = Vec::new();
        let mut offset = 0u64;
        while offset < len {
            let piece = record_at(image, offset, pieces.last())?;
            offset = piece.file_offset + piece.phys.len();
            pieces.push(piece);
        }
        let map = FileMap::new(pieces).map_err(|e| image.corrupt(0, e.to_string()))?;
        Ok(LimeReader {
            mapped: MappedFile::new(path, file, map),
            metadata: ImageMetadata::default(),
        })
    }
}

/// The record whose header is at `offset`: a whole LiME header whose range
/// fits the file and ascends from the `previous` record's.
fn record_at(
    image: Parsing<'_>,
    offset: u64,
    previous: Option<&FilePiece>,
) -> Result<FilePiece, FormatError> {
    let len = image.len;
    if len - offset < HEADER_LEN {
        return Err(image.corrupt(
            offset,
            format!(
                "truncated record header: {} bytes left in the file, a header needs {HEADER_LEN}",
                len - offset
            ),
        ));
    }
    let header = read_record_header(image.path, image.file, offset)?;
    let magic = header.magic;
    if magic == AVML_MAGIC {
        return Err(avml_unsupported(image.path, offset));
    }
    if magic != MAGIC {
        return Err(image.corrupt(
            offset,
            format!("bad record magic {magic:#010x}, expected {MAGIC:#010x}"),
        ));
    }
    let range = header.checked_range(image, offset, VERSION, "record")?;
    let data = offset + HEADER_LEN;
    if range.len() > len - data {
        return Err(image.corrupt(
            offset,
            format!(
                "record {range} holds {:#x} bytes but only {:#x} remain in the file: truncated",
                range.len(),
                len - data
            ),
        ));
    }
    check_ascends(image, offset, "record", range, previous.map(|p| p.phys))?;
    Ok(FilePiece {
        phys: range,
        file_offset: data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmem_core::PhysicalMemory;
    use std::io::Write;

    #[test]
    fn header_bytes() {
        let h = header(Range::new(0x1000, 0x9fc00).unwrap());
        assert_eq!(
            h,
            [
                0x45, 0x4d, 0x69, 0x4c, // "EMiL"
                1, 0, 0, 0, // version
                0x00, 0x10, 0, 0, 0, 0, 0, 0, // start
                0xff, 0xfb, 0x09, 0, 0, 0, 0, 0, // inclusive end 0x9fbff
                0, 0, 0, 0, 0, 0, 0, 0, // reserved
            ]
        );
        assert_eq!(&h[..4], b"EMiL");
    }

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.lime");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        (dir, path)
    }

    fn open_err(bytes: &[u8]) -> FormatError {
        let (_dir, path) = file_with(bytes);
        let err = LimeReader::open(&path, File::open(&path).unwrap()).unwrap_err();
        assert_eq!(err.path(), path);
        err
    }

    fn record(start: u64, end: u64, fill: u8) -> Vec<u8> {
        let mut v = header(Range::new(start, end).unwrap()).to_vec();
        v.resize(v.len() + (end - start) as usize, fill);
        v
    }

    #[test]
    fn reads_hand_made_records() {
        let mut bytes = record(0x1000, 0x1010, 0xaa);
        bytes.extend(record(0x1010, 0x1020, 0xbb)); // adjacent is fine
        bytes.extend(record(0x5000, 0x5001, 0xcc));
        let (_dir, path) = file_with(&bytes);
        let mut r = LimeReader::open(&path, File::open(&path).unwrap()).unwrap();
        let starts: Vec<u64> = r.memory_map().ranges().iter().map(|r| r.start).collect();
        assert_eq!(starts, [0x1000, 0x1010, 0x5000]);
        let mut buf = [0u8; 2];
        r.read_at(0x100f, &mut buf[..1]).unwrap();
        assert_eq!(buf[0], 0xaa);
        r.read_at(0x5000, &mut buf[..1]).unwrap();
        assert_eq!(buf[0], 0xcc);
        assert!(r.read_at(0x100f, &mut buf).is_err(), "straddles records");
    }

    #[test]
    fn truncated_data_names_the_record() {
        let mut bytes = record(0x1000, 0x2000, 1);
        bytes.extend(record(0x3000, 0x4000, 2));
        bytes.truncate(bytes.len() - 1);
        let err = open_err(&bytes);
        assert_eq!(err.offset(), 0x1020);
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn truncated_header() {
        let mut bytes = record(0x1000, 0x2000, 1);
        bytes.extend_from_slice(&header(Range::new(0x3000, 0x4000).unwrap())[..20]);
        let err = open_err(&bytes);
        assert_eq!(err.offset(), 0x1020);
        assert!(err.to_string().contains("truncated record header"), "{err}");
    }

    #[test]
    fn bad_magic_and_version() {
        let mut bytes = record(0, 0x10, 1);
        bytes.extend(record(0x10, 0x20, 1));
        bytes[0x30] = b'X';
        let err = open_err(&bytes);
        assert_eq!(err.offset(), 0x30);
        assert!(err.to_string().contains("magic"), "{err}");
        let mut bytes = record(0, 0x10, 1);
        bytes[4] = 2;
        assert!(open_err(&bytes).to_string().contains("version 2"));
    }

    #[test]
    fn overlapping_and_descending_records() {
        let mut bytes = record(0x2000, 0x3000, 1);
        bytes.extend(record(0x2fff, 0x4000, 1));
        let err = open_err(&bytes);
        assert_eq!(err.offset(), 0x1020);
        assert!(err.to_string().contains("ascend"), "{err}");
        let mut bytes = record(0x2000, 0x3000, 1);
        bytes.extend(record(0x0, 0x1000, 1));
        assert_eq!(open_err(&bytes).offset(), 0x1020);
    }

    #[test]
    fn reversed_and_unrepresentable_ranges() {
        let mut bytes = record(0x2000, 0x3000, 1);
        bytes[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
        assert!(open_err(&bytes).to_string().contains("reversed"));
        let mut bytes = record(0x2000, 0x3000, 1);
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(open_err(&bytes).offset(), 0);
    }

    #[test]
    fn huge_sizes_do_not_allocate() {
        // A header claiming almost 2^64 bytes must fail on the length check.
        let mut bytes = header(Range::new(0, 0x10).unwrap()).to_vec();
        bytes[16..24].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert!(open_err(&bytes).to_string().contains("truncated"));
    }

    #[test]
    fn avml_record_is_unsupported() {
        let mut bytes = record(0, 0x10, 1);
        bytes.extend(record(0x10, 0x20, 1));
        bytes[0x30..0x34].copy_from_slice(b"AVML");
        let err = open_err(&bytes);
        assert!(matches!(err, FormatError::Unsupported { offset: 0x30, .. }));
        assert!(err.to_string().contains("AVML"));
    }

    #[test]
    fn empty_file() {
        assert!(matches!(open_err(&[]), FormatError::Empty { .. }));
    }
}
