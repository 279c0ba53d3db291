//! AFF4 Standard containers as the pmem 2.x/3.x imagers wrote them.
//!
//! A ZIP64 volume (zip comment and `container.description` = the volume
//! URN, `version.txt`, `information.turtle`) holding physical memory as an
//! `aff4:Map` (category `memory/physical`, members `map` and `idx`) over an
//! `aff4:ImageStream` of 32 KiB chunks, 1024 per bevy, snappy by default
//! (lz4, deflate, stored on request). Each bevy is a member `<stream>/%08d`
//! with the chunks back to back plus `<stream>/%08d.index` of 12-byte
//! {u64 offset, u32 length} entries; a chunk stored at full chunk size is
//! uncompressed. Member names are the URN %-escaped (`aff4%3A%2F%2F...`).
//! A symbol bundle captured with the memory is the member
//! [`SYMBOLS_MEMBER`], which the map's `pmem:symbols` names.
//!
//! The writer only goes forward (pipes work): members carry ZIP data
//! descriptors; map, idx and the Turtle (all known from the plan) come after
//! the bevies, then the central directory. The stream holds the memory that
//! was read back to back, its last chunk padded with zeros (the stream's
//! `aff4:size` says where it ends); the map points each run of memory at the
//! stream, at the symbolic stream `aff4:Zero` (runs of zero pages of at least
//! [`ZERO_RUN_MIN`]: kept out of the stream, and the map says they were read
//! and found zero) or at `aff4:UnreadableData` (pages that could not be read).
//!
//! The reader takes the `aff4:Map` whose category is memory/physical (else
//! the first Map, else the first ImageStream read as address = offset), and
//! accepts both index layouts (12-byte `.index` members of the standard, the
//! 4-byte offsets of Rekall-era `/index` members).

mod reader;
mod volume;
mod writer;
mod zip;

pub use reader::Aff4Reader;
pub use writer::Aff4Writer;

use std::io::{self, Read};

/// Uncompressed bytes per image stream chunk (`aff4:chunkSize`) pmem
/// writes, and what the reader assumes when a stream does not say.
pub const CHUNK_SIZE: u64 = 32 * 1024;
/// Chunks per bevy (`aff4:chunksInSegment`), written and assumed likewise.
pub const CHUNKS_PER_SEGMENT: u64 = 1024;
/// The AFF4 vocabulary's namespace; predicates and types are `AFF4` + name.
pub const AFF4: &str = "http://aff4.org/Schema#";
/// `aff4:category` of a map holding physical memory: the one the reader
/// picks when a volume holds several.
pub const CATEGORY_PHYSICAL: &str = "http://aff4.org/Schema#memory/physical";
/// The symbolic stream map entries point at for memory that could not be
/// read (it reads as zeros).
pub const UNREADABLE: &str = "http://aff4.org/Schema#UnreadableData";
/// The symbolic stream of zeros: map entries for memory read and found
/// zero point at it instead of storing the bytes.
pub const ZERO: &str = "http://aff4.org/Schema#Zero";
/// Shorter runs of zero pages go into the stream (they compress to almost
/// nothing): each map entry costs 28 bytes held until the end, so this bounds
/// the map to 28 bytes per MiB of memory whatever the layout.
pub const ZERO_RUN_MIN: u64 = 1 << 20;
/// pmem's own predicates (metadata JSON, VMCOREINFO, the symbol bundle).
pub const PMEM_NS: &str = "https://github.com/pmem-rs/pmem/aff4#";
/// The member holding the symbol bundle (a tar archive, stored as it is).
/// Its URN, the volume's followed by `/` and this name (as pyaff4 names
/// members), is the object of the map's `pmem:symbols`.
pub const SYMBOLS_MEMBER: &str = "pmem-symbols.tar";

/// Chunk compression of the image stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Snappy raw blocks: the pmem imagers' default, and pmem's.
    #[default]
    Snappy,
    /// LZ4 block format.
    Lz4,
    /// zlib-wrapped deflate (RFC 1950).
    Deflate,
    /// No compression: chunks stored as they are.
    Stored,
}

impl Compression {
    /// The compressionMethod IRI the pmem 3.x imagers (c-aff4) wrote.
    pub fn iri(self) -> &'static str {
        match self {
            Compression::Snappy => "http://code.google.com/p/snappy/",
            Compression::Lz4 => "https://code.google.com/p/lz4/",
            // pyaff4's and c-aff4's zlib IRI: readers match the IRI exactly.
            Compression::Deflate => "https://www.ietf.org/rfc/rfc1950.txt",
            Compression::Stored => "http://aff4.org/Schema#NullCompressor",
        }
    }

    /// Any IRI a writer used for these methods (older vocabulary too).
    fn from_iri(iri: &str) -> Option<Compression> {
        let l = iri.to_ascii_lowercase();
        if l.contains("snappy") {
            Some(Compression::Snappy)
        } else if l.contains("lz4") {
            Some(Compression::Lz4)
        } else if l.contains("1950") || l.contains("zlib") || l.contains("deflate") {
            Some(Compression::Deflate)
        } else if l.contains("null") || l.contains("stored") {
            Some(Compression::Stored)
        } else {
            None
        }
    }

    fn compress(self, chunk: &[u8]) -> Vec<u8> {
        match self {
            Compression::Snappy => snap::raw::Encoder::new()
                .compress_vec(chunk)
                .unwrap_or_else(|_| chunk.to_vec()),
            Compression::Lz4 => lz4_flex::block::compress(chunk),
            Compression::Deflate => {
                use std::io::Write;
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                // Writing to a Vec cannot fail; on the impossible error the
                // chunk is stored raw, which every reader accepts.
                match e.write_all(chunk).and_then(|()| e.finish()) {
                    Ok(v) => v,
                    Err(_) => chunk.to_vec(),
                }
            }
            Compression::Stored => chunk.to_vec(),
        }
    }

    fn decompress(self, data: &[u8], size: usize) -> io::Result<Vec<u8>> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        match self {
            Compression::Snappy => {
                let n = snap::raw::decompress_len(data).map_err(|e| invalid(e.to_string()))?;
                if n > size {
                    return Err(invalid(format!(
                        "snappy chunk of {n} bytes, chunk size {size}"
                    )));
                }
                snap::raw::Decoder::new()
                    .decompress_vec(data)
                    .map_err(|e| invalid(e.to_string()))
            }
            Compression::Lz4 => {
                lz4_flex::block::decompress(data, size).map_err(|e| invalid(e.to_string()))
            }
            Compression::Deflate => {
                let mut out = Vec::with_capacity(size);
                flate2::read::ZlibDecoder::new(data)
                    .take(size as u64 + 1)
                    .read_to_end(&mut out)?;
                Ok(out)
            }
            Compression::Stored => Ok(data.to_vec()),
        }
    }
}

/// A URN as a member name: `aff4://x/y` -> `aff4%3A%2F%2Fx/y`.
fn member_name(urn: &str) -> String {
    match urn.strip_prefix("aff4://") {
        Some(rest) => format!("aff4%3A%2F%2F{rest}"),
        None => urn.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::zip::{self, ZipIndex};
    use super::*;
    use crate::test_util::{check_symbols_and_memory, map, symbol_bundle, write_image};
    use crate::{Format, FormatError, ImageFile, ImageReader};
    use pmem_core::Arch;
    use pmem_core::{PhysicalMemory, Plan};
    use std::fs::File;
    use std::path::{Path, PathBuf};

    /// A small AFF4 volume (stored members: easy to edit in place).
    fn image() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let plan = Plan::new(
            map(&[(0x1000, 0x3000), (0x10_0000, 0x10_1000)]),
            Arch::X86_64,
        );
        let bytes = write_image(Format::Aff4, &plan);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.aff4");
        (dir, path, bytes)
    }

    fn reopen(path: &Path, bytes: &[u8]) -> Result<Aff4Reader, FormatError> {
        std::fs::write(path, bytes).unwrap();
        Aff4Reader::open(path, File::open(path).unwrap().into())
    }

    /// `bytes` with the one occurrence of `from` replaced by `to` (same length).
    fn replaced(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let hits: Vec<usize> = (0..=bytes.len() - from.len())
            .filter(|&i| &bytes[i..i + from.len()] == from)
            .collect();
        assert_eq!(hits.len(), 1, "{:?}", String::from_utf8_lossy(from));
        let mut out = bytes.to_vec();
        out[hits[0]..hits[0] + to.len()].copy_from_slice(to);
        out
    }

    fn position(bytes: &[u8], what: &[u8]) -> usize {
        bytes
            .windows(what.len())
            .rposition(|w| w == what)
            .unwrap_or_else(|| panic!("{what:?} not found"))
    }

    /// (local header offset, data offset) of the member whose name ends with `suffix`.
    fn member(path: &Path, bytes: &[u8], suffix: &str) -> (u64, usize) {
        std::fs::write(path, bytes).unwrap();
        let file: ImageFile = File::open(path).unwrap().into();
        let len = bytes.len() as u64;
        let zip = ZipIndex::open(&file, len).unwrap();
        let m = zip
            .members
            .iter()
            .find(|m| m.name.ends_with(suffix))
            .unwrap();
        (m.header, zip::data_offset(&file, len, m).unwrap() as usize)
    }

    fn read_error(path: &Path, bytes: &[u8]) -> String {
        let mut r = reopen(path, bytes).unwrap();
        let mut buf = vec![0u8; 0x2000];
        r.read_at(0x1000, &mut buf).unwrap_err().to_string()
    }

    /// The small volume of [`image`], with a symbol bundle.
    fn image_with_symbols(symbols: &[u8]) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let mut plan = Plan::new(
            map(&[(0x1000, 0x3000), (0x10_0000, 0x10_1000)]),
            Arch::X86_64,
        );
        plan.symbols = Some(symbols.to_vec());
        let bytes = write_image(Format::Aff4, &plan);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.aff4");
        (dir, path, bytes)
    }

    #[test]
    fn symbol_bundle_round_trip() {
        let symbols = symbol_bundle();
        let (_dir, path, bytes) = image_with_symbols(&symbols);
        let mut r = reopen(&path, &bytes).unwrap();
        check_symbols_and_memory(&mut r, &symbols, 1);
        // The member, stored as it is, and the Turtle's link to it.
        let (_, data) = member(&path, &bytes, SYMBOLS_MEMBER);
        assert_eq!(&bytes[data..data + symbols.len()], &symbols[..]);
        let link = format!("pmem:symbols <{}/{SYMBOLS_MEMBER}>", r.volume());
        assert!(position(&bytes, link.as_bytes()) > data);
        // A volume without one has none.
        let (_dir, path, bytes) = image();
        assert_eq!(reopen(&path, &bytes).unwrap().metadata().symbols, None);
    }

    #[test]
    fn the_time_map_is_stated_in_the_turtle() {
        let plan = Plan::new(map(&[(0x1000, 0x3000)]), Arch::X86_64);
        let json = "{\"order\":\"kernel-first\",\"regions\":[{\"start\":\"0x1000\"}]}";
        let bytes = crate::test_util::write_image_with_time_map(Format::Aff4, &plan, Some(json));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.aff4");
        let r = reopen(&path, &bytes).unwrap();
        assert_eq!(r.metadata().time_map_json.as_deref(), Some(json));
        let (_dir, path, bytes) = image();
        assert_eq!(
            reopen(&path, &bytes).unwrap().metadata().time_map_json,
            None
        );
    }

    #[test]
    fn a_symbol_member_claiming_too_much_or_missing_is_refused() {
        let (_dir, path, bytes) = image_with_symbols(&[7; 100]);
        let (header, _) = member(&path, &bytes, SYMBOLS_MEMBER);
        // The central directory's ZIP64 sizes (uncompressed, compressed)
        // follow the name and the extra's 4-byte header.
        let sizes = position(&bytes, SYMBOLS_MEMBER.as_bytes()) + SYMBOLS_MEMBER.len() + 4;
        for (size, says) in [
            (1u64 << 40, "exceeds the"),
            (crate::MAX_SYMBOLS + 1, "exceeds the"),
            (crate::MAX_SYMBOLS, "truncated"),
        ] {
            let mut bad = bytes.clone();
            bad[sizes..sizes + 8].copy_from_slice(&size.to_le_bytes());
            bad[sizes + 8..sizes + 16].copy_from_slice(&size.to_le_bytes());
            let err = reopen(&path, &bad).unwrap_err();
            assert_eq!(err.offset(), header, "{err}");
            assert!(err.to_string().contains(SYMBOLS_MEMBER), "{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
        // The Turtle naming a member the volume does not have.
        let (turtle_at, _) = member(&path, &bytes, "information.turtle");
        let bad = replaced(&bytes, b"/pmem-symbols.tar>", b"/pmem-symbols.taX>");
        let err = reopen(&path, &bad).unwrap_err();
        assert_eq!(err.offset(), turtle_at, "{err}");
        assert!(err.to_string().contains("no member of the volume"), "{err}");
    }

    #[test]
    fn corrupt_containers_are_named_by_offset() {
        let (_dir, path, bytes) = image();
        let mut r = reopen(&path, &bytes).unwrap();
        let mut page = [0u8; 4096];
        r.read_at(0x10_0000, &mut page).unwrap();
        assert_eq!(page, [0x22; 4096]);
        // Truncation anywhere is an error, never a panic.
        for cut in [
            1,
            29,
            30,
            200,
            bytes.len() / 2,
            bytes.len() - 22,
            bytes.len() - 1,
        ] {
            assert!(reopen(&path, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        // The ZIP64 end record: a central directory past the end of the
        // file, more members than any volume holds.
        let eocd = position(&bytes, &0x0605_4b50u32.to_le_bytes()) as u64;
        let rec = position(&bytes, &0x0606_4b50u32.to_le_bytes());
        let mut bad = bytes.clone();
        bad[rec + 48..rec + 56].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        let err = reopen(&path, &bad).unwrap_err();
        assert_eq!(err.offset(), eocd, "{err}");
        assert!(err.to_string().contains("does not fit the file"), "{err}");
        let mut bad = bytes.clone();
        bad[rec + 32..rec + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let err = reopen(&path, &bad).unwrap_err();
        assert!(err.to_string().contains("exceed the limit"), "{err}");
        // The locator pointing past the end.
        let mut bad = bytes.clone();
        let locator = eocd as usize - 20;
        bad[locator + 8..locator + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = reopen(&path, &bad).unwrap_err();
        assert_eq!(err.offset(), locator as u64, "{err}");
        // No information.turtle.
        let mut bad = bytes.clone();
        let name = position(&bytes, b"information.turtle");
        bad[name + 17] = b'X';
        let err = reopen(&path, &bad).unwrap_err();
        assert!(
            err.to_string().contains("no information.turtle member"),
            "{err}"
        );
        // Every single-byte change in the central directory and end records
        // fails cleanly or reads.
        let cd = position(&bytes, &0x0201_4b50u32.to_le_bytes()) - 400;
        for i in cd..bytes.len() {
            for flip in [0x01, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                if let Ok(mut r) = reopen(&path, &bad) {
                    let mut buf = vec![0u8; 0x2000];
                    let _ = r.read_at(0x1000, &mut buf);
                }
            }
        }
    }

    #[test]
    fn corrupt_metadata_is_named_by_offset() {
        let (_dir, path, bytes) = image();
        let (turtle_at, _) = member(&path, &bytes, "information.turtle");
        let refused = |bad: &[u8], says: &str| {
            let err = reopen(&path, bad).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
            err.offset()
        };
        let bad = replaced(&bytes, b"aff4:chunkSize 32768", b"aff4:chunkSize 00000");
        assert_eq!(refused(&bad, "out of range"), turtle_at);
        let bad = replaced(
            &bytes,
            b"aff4:chunksInSegment 1024",
            b"aff4:chunksInSegment \"ab\"",
        );
        assert_eq!(refused(&bad, "is not a number"), turtle_at);
        // A stream size shorter than the map needs.
        let (map_at, _) = member(&path, &bytes, "/map");
        let bad = replaced(&bytes, b"aff4:size 12288", b"aff4:size 1228 ");
        assert_eq!(refused(&bad, "past the end of the image stream"), map_at);
        let bad = replaced(&bytes, b"aff4:size 12288 ;", b"aff4:size 12288 ]");
        assert_eq!(refused(&bad, "information.turtle"), turtle_at);
        let bad = replaced(&bytes, b"0x1000-0x3000", b"0x1000-0x4000");
        assert_eq!(refused(&bad, "pmem:ranges disagrees"), turtle_at);
    }

    #[test]
    fn corrupt_maps_and_indexes_are_named() {
        let (_dir, path, bytes) = image();
        let (map_at, map) = member(&path, &bytes, "/map");
        let entry = |bytes: &mut Vec<u8>, i: usize, field: usize, value: u64| {
            let at = map + i * 28 + field;
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        };
        // An entry whose range runs past 2^64.
        let mut bad = bytes.clone();
        entry(&mut bad, 0, 0, u64::MAX - 0x10);
        let err = reopen(&path, &bad).unwrap_err();
        assert_eq!(err.offset(), map_at);
        assert!(err.to_string().contains("runs past 2^64"), "{err}");
        // An entry reading past the end of the image stream, or past 2^64 in it.
        for offset in [0x3000, u64::MAX - 0x10] {
            let mut bad = bytes.clone();
            entry(&mut bad, 0, 16, offset);
            let err = reopen(&path, &bad).unwrap_err();
            assert_eq!(err.offset(), map_at);
            assert!(
                err.to_string().contains("past the end of the image stream"),
                "{err}"
            );
        }
        // An entry naming a target the idx member does not list.
        let mut bad = bytes.clone();
        bad[map + 24..map + 28].copy_from_slice(&7u32.to_le_bytes());
        let err = reopen(&path, &bad).unwrap_err();
        assert!(err.to_string().contains("names target 7"), "{err}");
        // Overlapping entries.
        let mut bad = bytes.clone();
        entry(&mut bad, 1, 0, 0x2000);
        assert!(reopen(&path, &bad).is_err());
        // A bevy index entry outside its bevy: found when the chunk is read.
        let (_, index) = member(&path, &bytes, "00000000.index");
        for (field, value) in [(0, u64::MAX - 2), (0, 1 << 40)] {
            let mut bad = bytes.clone();
            bad[index + field..index + field + 8].copy_from_slice(&value.to_le_bytes());
            let err = read_error(&path, &bad);
            assert!(err.contains("lies outside its bevy"), "{err}");
        }
        // A chunk length of zero or past the bevy.
        for length in [0u32, u32::MAX] {
            let mut bad = bytes.clone();
            bad[index + 8..index + 12].copy_from_slice(&length.to_le_bytes());
            let err = read_error(&path, &bad);
            assert!(!err.is_empty());
        }
    }

    #[test]
    fn truncation_anywhere_is_an_error_naming_the_file() {
        let (_dir, path, bytes) = image();
        // The ZIP comment ends the file, so every cut loses it or more.
        let cuts = (1..bytes.len())
            .step_by(61)
            .chain(bytes.len() - 30..bytes.len());
        for cut in cuts {
            let err = reopen(&path, &bytes[..cut]).expect_err("a truncated volume");
            assert_eq!(err.path(), path, "cut at {cut}");
            assert!(
                err.offset() <= cut as u64,
                "cut at {cut}: the offset lies in the file: {err}"
            );
            assert!(err.to_string().starts_with(&path.display().to_string()));
        }
    }

    #[test]
    fn turtle_naming_no_stream_or_an_unknown_compression_is_refused() {
        let (_dir, path, bytes) = image();
        let (turtle_at, _) = member(&path, &bytes, "information.turtle");
        // Neither a Map nor an ImageStream.
        let bad = replaced(&bytes, b"a aff4:Map ;", b"a aff4:Max ;");
        let bad = replaced(&bad, b"a aff4:ImageStream ;", b"a aff4:ImageStreax ;");
        let err = reopen(&path, &bad).unwrap_err();
        assert_eq!(err.offset(), turtle_at, "{err}");
        assert!(
            err.to_string()
                .contains("names no aff4:Map or aff4:ImageStream"),
            "{err}"
        );
        // A compression method pmem cannot decode.
        let bad = replaced(&bytes, b"p/snappy/>", b"p/snapxy/>");
        let err = reopen(&path, &bad).unwrap_err();
        assert!(matches!(err, FormatError::Unsupported { .. }), "{err}");
        assert_eq!(err.offset(), turtle_at);
        assert!(err.to_string().contains("compression method"), "{err}");
    }

    #[test]
    fn a_map_without_its_idx_member_is_refused() {
        let (_dir, path, bytes) = image();
        let (turtle_at, _) = member(&path, &bytes, "information.turtle");
        // The central directory's name (the last one) is what the reader
        // looks members up by.
        let mut bad = bytes.clone();
        let name = position(&bytes, b"/idx");
        bad[name + 1] = b'X';
        let err = reopen(&path, &bad).unwrap_err();
        assert_eq!(err.offset(), turtle_at, "{err}");
        assert!(err.to_string().contains("has no idx member"), "{err}");
    }

    #[test]
    fn chunks_that_do_not_decode_are_read_errors_naming_the_chunk() {
        let (_dir, path, bytes) = image();
        let (_, data) = member(&path, &bytes, "/00000000");
        // A snappy preamble announcing more than a chunk (0x10000 bytes).
        let mut bad = bytes.clone();
        bad[data..data + 3].copy_from_slice(&[0x80, 0x80, 0x04]);
        let mut r = reopen(&path, &bad).unwrap();
        let mut buf = [0u8; 16];
        let err = r.read_at(0x1000, &mut buf).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(
            err.contains("chunk 0: snappy chunk of 65536 bytes"),
            "{err}"
        );
        // Any byte of the compressed chunk changed: an error or bytes,
        // never a panic.
        for i in 0..64 {
            let mut bad = bytes.clone();
            bad[data + i] ^= 0x5a;
            let mut r = reopen(&path, &bad).unwrap();
            let mut buf = vec![0u8; 0x2000];
            let _ = r.read_at(0x1000, &mut buf);
        }
    }
}
