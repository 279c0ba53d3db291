//! The AVML reader: opening indexes every block's chunks (headers only);
//! reads decode one chunk at a time.

use super::frame::{
    masked_crc, read_chunk_header, snappy_len, ChunkHeader, STREAM_ID, TYPE_COMPRESSED,
    TYPE_STORED, TYPE_STREAM_ID,
};
use super::{FRAME, HEADER_LEN, MAGIC, VERSION};
use crate::bytes::u32_le;
use crate::image_file::{read_exact_at, Parsing};
use crate::lime::{check_ascends, read_record_header};
use crate::{Format, FormatError, ImageFile, ImageMetadata, ImageReader};
use pmem_core::{MemoryMap, PhysicalMemory, Range, ReadError};
use std::io;
use std::path::{Path, PathBuf};

/// One record of an AVML file, as found when opening it.
#[derive(Debug, Clone, Copy)]
struct BlockIndex {
    range: Range,
    /// File offset of the first chunk after the stream identifier.
    first_chunk: u64,
    /// File offset just past the stream's last chunk.
    stream_end: u64,
}

/// Where sequential reads left off inside a block.
#[derive(Debug, Clone, Copy)]
struct ChunkPos {
    block: usize,
    /// File offset of the chunk header.
    offset: u64,
    /// Physical address of the chunk's first byte.
    addr: u64,
}

/// An AVML v2 file opened for reading. Opening walks every chunk header
/// (not the data) to find the records; reads decode one 64 KiB chunk at a
/// time, so memory stays small whatever the image size.
#[derive(Debug)]
pub struct AvmlReader {
    path: PathBuf,
    file: ImageFile,
    map: MemoryMap,
    blocks: Vec<BlockIndex>,
    pos: Option<ChunkPos>,
    /// The decoded chunk at `cached_addr` (empty when none).
    cached: Vec<u8>,
    cached_addr: u64,
    compressed: Vec<u8>,
    decoder: snap::raw::Decoder,
    /// Always empty: AVML records nothing but memory.
    metadata: ImageMetadata,
}

impl AvmlReader {
    /// Indexes every block (its header and its chunks' headers, never the
    /// data), then serves reads from that index.
    pub fn open(path: &Path, file: impl Into<ImageFile>) -> Result<AvmlReader, FormatError> {
        let file: ImageFile = file.into();
        let image = Parsing::new(path, &file, Format::Avml)?.nonempty()?;
        let blocks = index_blocks(image)?;
        // Adjacent blocks read as one range.
        let map = MemoryMap::normalized(blocks.iter().map(|b| b.range).collect());
        Ok(AvmlReader {
            path: path.into(),
            file,
            map,
            blocks,
            pos: None,
            cached: Vec::new(),
            cached_addr: 0,
            compressed: Vec::new(),
            decoder: snap::raw::Decoder::new(),
            metadata: ImageMetadata::default(),
        })
    }

    fn fatal(&self, addr: u64, offset: u64, reason: String) -> ReadError {
        ReadError::Fatal {
            what: format!("{}: at file offset {offset:#x}", self.path.display()),
            addr,
            source: io::Error::new(io::ErrorKind::InvalidData, reason),
        }
    }

    fn io_fatal(&self, addr: u64, err: FormatError) -> ReadError {
        let offset = err.offset();
        self.fatal(addr, offset, err.to_string())
    }

    /// Decodes the chunk holding `addr` into `self.cached`.
    fn load(&mut self, addr: u64) -> Result<(), ReadError> {
        let block = match self.blocks.partition_point(|b| b.range.end <= addr) {
            i if i < self.blocks.len() && self.blocks[i].range.contains(addr) => i,
            _ => return Err(self.fatal(addr, 0, "address not held by any block".into())),
        };
        let b = self.blocks[block];
        let mut pos = match self.pos {
            Some(p) if p.block == block && p.addr <= addr => p,
            _ => ChunkPos {
                block,
                offset: b.first_chunk,
                addr: b.range.start,
            },
        };
        loop {
            if pos.offset >= b.stream_end {
                return Err(self.fatal(addr, pos.offset, "stream ended before the address".into()));
            }
            let ch = read_chunk_header(&self.path, &self.file, pos.offset)
                .map_err(|e| self.io_fatal(addr, e))?;
            let body = pos.offset + 4;
            let next = body + ch.len;
            if ch.kind != TYPE_COMPRESSED && ch.kind != TYPE_STORED {
                pos.offset = next;
                continue;
            }
            // Lengths were checked at open time (<= 64 KiB + overhead).
            let mut payload = std::mem::take(&mut self.compressed);
            payload.resize(ch.len as usize, 0);
            let read = read_exact_at(&self.path, &self.file, body, &mut payload);
            if let Err(e) = read {
                self.compressed = payload;
                return Err(self.io_fatal(addr, e));
            }
            let crc = u32_le(&payload, 0);
            let mut out = std::mem::take(&mut self.cached);
            let decoded = if ch.kind == TYPE_STORED {
                out.clear();
                out.extend_from_slice(&payload[4..]);
                Ok(())
            } else {
                match snap::raw::decompress_len(&payload[4..]) {
                    Ok(n) if n > 0 && n <= FRAME => {
                        out.resize(n, 0);
                        self.decoder
                            .decompress(&payload[4..], &mut out)
                            .map(|_| ())
                            .map_err(|e| format!("snappy data does not decode: {e}"))
                    }
                    _ => Err("bad snappy length preamble".to_string()),
                }
            };
            self.compressed = payload;
            if let Err(reason) = decoded {
                self.cached = out;
                return Err(self.fatal(addr, pos.offset, reason));
            }
            if masked_crc(&out) != crc {
                self.cached = out;
                return Err(self.fatal(addr, pos.offset, "CRC-32C mismatch: corrupt chunk".into()));
            }
            let chunk_addr = pos.addr;
            pos.addr += out.len() as u64;
            pos.offset = next;
            self.cached = out;
            self.cached_addr = chunk_addr;
            if addr < pos.addr {
                self.pos = Some(pos);
                return Ok(());
            }
        }
    }
}

/// Every block of the file, in file order.
fn index_blocks(image: Parsing<'_>) -> Result<Vec<BlockIndex>, FormatError> {
    let mut blocks: Vec<BlockIndex> = Vec::new();
    let mut offset = 0u64;
    while offset < image.len {
        let range = block_range(image, offset, blocks.last())?;
        let stream_start = offset + HEADER_LEN;
        let (first_chunk, stream_end) = walk_stream(image, range, stream_start)?;
        check_stream_length(image, range, stream_start, stream_end)?;
        blocks.push(BlockIndex {
            range,
            first_chunk,
            stream_end,
        });
        offset = stream_end + 8;
    }
    Ok(blocks)
}

/// The range of the block whose header is at `offset`: a whole AVML
/// header, ascending from the `previous` block.
fn block_range(
    image: Parsing<'_>,
    offset: u64,
    previous: Option<&BlockIndex>,
) -> Result<Range, FormatError> {
    if image.len - offset < HEADER_LEN {
        return Err(image.corrupt(
            offset,
            format!("truncated block header: {} bytes left", image.len - offset),
        ));
    }
    let header = read_record_header(image.path, image.file, offset)?;
    let magic = header.magic;
    if magic != MAGIC {
        return Err(image.corrupt(
            offset,
            format!("bad block magic {magic:#010x}, expected {MAGIC:#010x} (\"AVML\"); an AVML file cannot mix LiME and AVML records"),
        ));
    }
    let range = header.checked_range(image, offset, VERSION, "block")?;
    check_ascends(image, offset, "block", range, previous.map(|b| b.range))?;
    Ok(range)
}

/// Walks the chunks of the block stream at `stream_start` until they hold
/// `range`'s bytes: headers and, for compressed chunks, the length
/// preamble; never the data. Returns the first data chunk's offset and the
/// offset just past the stream.
fn walk_stream(
    image: Parsing<'_>,
    range: Range,
    stream_start: u64,
) -> Result<(u64, u64), FormatError> {
    let len = image.len;
    let mut at = stream_start;
    let mut decoded = 0u64;
    let mut first_chunk = None;
    while decoded < range.len() {
        if len - at.min(len) < 4 {
            return Err(image.corrupt(
                at,
                format!(
                    "block {range}: stream truncated after {decoded:#x} of {:#x} bytes",
                    range.len()
                ),
            ));
        }
        let ch = read_chunk_header(image.path, image.file, at)?;
        if ch.len > len - at - 4 {
            return Err(image.corrupt(
                at,
                format!("chunk of {:#x} bytes runs past the end of the file", ch.len),
            ));
        }
        match ch.kind {
            TYPE_STREAM_ID => check_stream_id(image, at, ch)?,
            _ if at == stream_start => {
                return Err(image.corrupt(
                    at,
                    "snappy stream does not start with its stream identifier",
                ));
            }
            TYPE_COMPRESSED | TYPE_STORED => {
                first_chunk.get_or_insert(at);
                decoded += data_chunk_len(image, at, ch)?;
                if decoded > range.len() {
                    return Err(image.corrupt(
                        at,
                        format!(
                            "block {range}: stream holds more than the block's {:#x} bytes",
                            range.len()
                        ),
                    ));
                }
            }
            0x02..=0x7f => {
                return Err(image.corrupt(
                    at,
                    format!("reserved unskippable snappy chunk type {:#04x}", ch.kind),
                ));
            }
            // Padding and reserved skippable chunks.
            _ => {}
        }
        at += 4 + ch.len;
    }
    Ok((first_chunk.unwrap_or(at), at))
}

/// Checks the stream identifier chunk at `at`.
fn check_stream_id(image: Parsing<'_>, at: u64, ch: ChunkHeader) -> Result<(), FormatError> {
    if ch.len != 6 {
        return Err(image.corrupt(at, "bad snappy stream identifier length"));
    }
    let mut id = [0u8; 10];
    image.read_exact_at(at, &mut id)?;
    if id != STREAM_ID {
        return Err(image.corrupt(at, "bad snappy stream identifier"));
    }
    Ok(())
}

/// How many bytes the data chunk at `at` decodes to: its length for a
/// stored chunk, the snappy preamble's for a compressed one (1 to
/// [`FRAME`]).
fn data_chunk_len(image: Parsing<'_>, at: u64, ch: ChunkHeader) -> Result<u64, FormatError> {
    let n = if ch.kind == TYPE_STORED {
        ch.len.checked_sub(4)
    } else {
        let mut pre = [0u8; 9];
        let avail = ch.len.min(9) as usize;
        image.read_exact_at(at + 4, &mut pre[..avail])?;
        pre.get(4..avail).and_then(snappy_len)
    };
    match n {
        Some(n) if n > 0 && n <= FRAME as u64 => Ok(n),
        _ => Err(image.corrupt(
            at,
            format!("data chunk of type {:#04x} has a bad length", ch.kind),
        )),
    }
}

/// Checks the u64 after a block's stream: the stream's length.
fn check_stream_length(
    image: Parsing<'_>,
    range: Range,
    stream_start: u64,
    stream_end: u64,
) -> Result<(), FormatError> {
    let at = stream_end;
    if image.len - at < 8 {
        return Err(image.corrupt(
            at,
            "missing the stream length after the block's snappy stream",
        ));
    }
    let mut trailer = [0u8; 8];
    image.read_exact_at(at, &mut trailer)?;
    let stated = u64::from_le_bytes(trailer);
    if stated != at - stream_start {
        return Err(image.corrupt(
            at,
            format!(
                "block {range}: stream length says {stated:#x}, the stream is {:#x} bytes",
                at - stream_start
            ),
        ));
    }
    Ok(())
}

impl PhysicalMemory for AvmlReader {
    fn memory_map(&self) -> &MemoryMap {
        &self.map
    }

    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if !self.map.covers(addr, buf.len() as u64) {
            return Err(self.fatal(
                addr,
                0,
                format!(
                    "{:#x} bytes requested outside the image's ranges",
                    buf.len()
                ),
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr + done as u64;
            let cached_end = self.cached_addr + self.cached.len() as u64;
            if !(self.cached_addr <= at && at < cached_end) {
                self.load(at)?;
            }
            let from = (at - self.cached_addr) as usize;
            let n = (self.cached.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.cached[from..from + n]);
            done += n;
        }
        Ok(())
    }
}

impl ImageReader for AvmlReader {
    fn format(&self) -> Format {
        Format::Avml
    }

    fn metadata(&self) -> &ImageMetadata {
        &self.metadata
    }
}
