//! The AFF4 reader: the map's entries, and the stream's chunks decoded
//! one bevy index and one chunk at a time.

use super::volume::{zip_corrupt, Volume, MAX_META};
use super::zip::{self, ZipIndex};
use super::Compression;
use crate::bytes::{u32_le, u64_le};
use crate::image_file::Parsing;
use crate::{Format, FormatError, ImageFile, ImageMetadata, ImageReader};
use pmem_core::{MemoryMap, PhysicalMemory, Range, ReadError};
use std::io;
use std::path::{Path, PathBuf};

/// One entry of the map: memory `range` comes from `target` at `offset`.
#[derive(Debug, Clone, Copy)]
pub(super) struct MapEntry {
    pub(super) range: Range,
    pub(super) offset: u64,
    /// The image stream, or `false` for a symbolic target (reads as zeros).
    pub(super) stream: bool,
    /// The target is aff4:UnreadableData.
    pub(super) unreadable: bool,
}

/// Where one bevy's chunks are.
#[derive(Debug)]
struct Bevy {
    data: u64,
    len: u64,
    /// (offset, length) per chunk.
    chunks: Vec<(u64, u32)>,
}

/// An AFF4 volume opened for reading.
#[derive(Debug)]
pub struct Aff4Reader {
    path: PathBuf,
    file: ImageFile,
    len: u64,
    zip: ZipIndex,
    map: MemoryMap,
    entries: Vec<MapEntry>,
    stream_member: String,
    stream_size: u64,
    chunk_size: u64,
    chunks_per_segment: u64,
    compression: Compression,
    metadata: ImageMetadata,
    bevy: Option<(u64, Bevy)>,
    chunk: Option<(u64, Vec<u8>)>,
}

impl Aff4Reader {
    /// Indexes the ZIP, reads the Turtle, finds the physical-memory map and
    /// its stream, and checks the map's entries against the stream.
    pub fn open(path: &Path, file: ImageFile) -> Result<Aff4Reader, FormatError> {
        let image = Parsing::new(path, &file, Format::Aff4)?.nonempty()?;
        let len = image.len;
        let zip = ZipIndex::open(&file, len).map_err(|e| zip_corrupt(image, e))?;
        let volume = Volume::read(image, &zip)?;
        let map_urn = volume.physical_map();
        let stream = volume.stream(image, &zip, map_urn.as_deref())?;
        let mut entries = match &map_urn {
            Some(m) => volume.map_entries(image, &zip, m, &stream)?,
            None => volume.whole_stream(image, &stream)?,
        };
        entries.sort_by_key(|e| e.range.start);
        MemoryMap::new(entries.iter().map(|e| e.range).collect())
            .map_err(|e| image.corrupt(volume.turtle_at, format!("map: {e}")))?;
        let map = volume.memory_ranges(image, map_urn.as_deref(), &entries)?;
        let metadata = volume.metadata(image, &zip, map_urn.as_deref(), &entries)?;
        Ok(Aff4Reader {
            path: path.into(),
            file,
            len,
            zip,
            map,
            entries,
            stream_member: stream.member,
            stream_size: stream.size.unwrap_or(u64::MAX),
            chunk_size: stream.chunk_size,
            chunks_per_segment: stream.chunks_per_segment,
            compression: stream.compression,
            metadata,
            bevy: None,
            chunk: None,
        })
    }

    /// The volume URN (the ZIP comment).
    pub fn volume(&self) -> &str {
        &self.zip.comment
    }

    /// Memory the map points at aff4:UnreadableData (read as zeros).
    pub fn unreadable(&self) -> Vec<Range> {
        self.metadata.unreadable.clone()
    }

    fn fatal(&self, addr: u64, reason: String) -> ReadError {
        ReadError::Fatal {
            what: format!("{}: AFF4 image stream", self.path.display()),
            addr,
            source: io::Error::new(io::ErrorKind::InvalidData, reason),
        }
    }

    /// Loads the index of bevy `n`: 12-byte entries in `<bevy>.index`, or the
    /// 4-byte offsets of the Rekall-era `<bevy>/index`.
    fn load_bevy(&mut self, n: u64, addr: u64) -> Result<(), ReadError> {
        if self.bevy.as_ref().is_some_and(|(b, _)| *b == n) {
            return Ok(());
        }
        let name = format!("{}/{n:08}", self.stream_member);
        let zerr = |e: zip::ZipError| format!("at file offset {:#x}: {}", e.offset, e.reason);
        let data_member = self
            .zip
            .find(&name)
            .cloned()
            .ok_or_else(|| self.fatal(addr, format!("no bevy member {name}")))?;
        let data = zip::stored_span(&self.file, self.len, &data_member)
            .map_err(|e| self.fatal(addr, zerr(e)))?;
        let chunks = if let Some(m) = self.zip.find(&format!("{name}.index")) {
            let raw = zip::read_member(&self.file, self.len, m, MAX_META)
                .map_err(|e| self.fatal(addr, zerr(e)))?;
            raw.chunks_exact(12)
                .map(|e| (u64_le(e, 0), u32_le(e, 8)))
                .collect()
        } else if let Some(m) = self.zip.find(&format!("{name}/index")) {
            let raw = zip::read_member(&self.file, self.len, m, MAX_META)
                .map_err(|e| self.fatal(addr, zerr(e)))?;
            let offsets: Vec<u64> = raw
                .chunks_exact(4)
                .map(|e| u64::from(u32_le(e, 0)))
                .collect();
            offsets
                .iter()
                .enumerate()
                .map(|(i, &o)| {
                    let end = offsets
                        .get(i + 1)
                        .copied()
                        .unwrap_or(data_member.compressed);
                    (o, end.saturating_sub(o).min(u64::from(u32::MAX)) as u32)
                })
                .collect()
        } else {
            return Err(self.fatal(addr, format!("bevy {name} has no index member")));
        };
        self.bevy = Some((
            n,
            Bevy {
                data,
                len: data_member.compressed,
                chunks,
            },
        ));
        Ok(())
    }

    /// The uncompressed chunk `n` of the image stream.
    fn load_chunk(&mut self, n: u64, addr: u64) -> Result<(), ReadError> {
        if self.chunk.as_ref().is_some_and(|(c, _)| *c == n) {
            return Ok(());
        }
        self.load_bevy(n / self.chunks_per_segment, addr)?;
        let (_, bevy) = self.bevy.as_ref().expect("loaded");
        let i = (n % self.chunks_per_segment) as usize;
        let &(offset, length) = bevy
            .chunks
            .get(i)
            .ok_or_else(|| self.fatal(addr, format!("chunk {n} is not in its bevy's index")))?;
        let size = self.chunk_size as usize;
        if u64::from(length) > 2 * self.chunk_size
            || offset
                .checked_add(u64::from(length))
                .is_none_or(|e| e > bevy.len)
        {
            return Err(self.fatal(
                addr,
                format!("chunk {n}: index entry {offset:#x} (+{length:#x}) lies outside its bevy"),
            ));
        }
        let mut raw = vec![0u8; length as usize];
        zip::read_at(&self.file, bevy.data + offset, &mut raw)
            .map_err(|e| self.fatal(addr, e.reason))?;
        let data = if length as usize == size {
            raw
        } else {
            self.compression
                .decompress(&raw, size)
                .map_err(|e| self.fatal(addr, format!("chunk {n}: {e}")))?
        };
        self.chunk = Some((n, data));
        Ok(())
    }
}

impl PhysicalMemory for Aff4Reader {
    fn memory_map(&self) -> &MemoryMap {
        &self.map
    }

    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if !self.map.covers(addr, buf.len() as u64) {
            return Err(self.fatal(
                addr,
                "not inside one range of the image's memory map".into(),
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr + done as u64;
            let i = self.entries.partition_point(|e| e.range.end <= at);
            let e = self.entries[i];
            let n = (buf.len() - done).min((e.range.end - at) as usize);
            if !e.stream {
                buf[done..done + n].fill(0);
                done += n;
                continue;
            }
            let mut pos = e.offset + (at - e.range.start);
            let mut left = n;
            while left > 0 {
                if pos >= self.stream_size {
                    return Err(self.fatal(at, "read past the image stream's size".into()));
                }
                let c = pos / self.chunk_size;
                self.load_chunk(c, at)?;
                let chunk = &self.chunk.as_ref().expect("loaded").1;
                let within = (pos % self.chunk_size) as usize;
                if within >= chunk.len() {
                    return Err(
                        self.fatal(at, format!("chunk {c} holds {} bytes, short", chunk.len()))
                    );
                }
                let k = left.min(chunk.len() - within);
                buf[done..done + k].copy_from_slice(&chunk[within..within + k]);
                done += k;
                left -= k;
                pos += k as u64;
            }
        }
        Ok(())
    }
}

impl ImageReader for Aff4Reader {
    fn format(&self) -> Format {
        Format::Aff4
    }

    fn metadata(&self) -> &ImageMetadata {
        &self.metadata
    }
}
